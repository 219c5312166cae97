"""User errors: one line from rank 0, the same exit code on every rank.

A user's mistake (config, data, tokenizer, checkpoint, layout, memory) is raised as an exception
whose message names what to fix. The entry point turns it into one `error: ...` line and an exit
code instead of a traceback per rank:

- before anything is built, every rank runs the same checks and then meets the others in
  `agree_on_error` (one all_gather over the default process group): rank 0 prints the first
  rank's message, and every rank returns the same code, so torchrun sees one kind of failure;
- once training runs, ranks can be inside different collectives, so `report_error_in_run` meets
  through the rendezvous store instead, with a deadline: the lowest failing rank prints (rank 0
  whenever it failed too), the others stay silent, and nobody waits forever for a stuck peer.

Bugs are not user errors: they keep their tracebacks.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3
# How long a failing rank waits in the store for the others to report the same failure.
_STORE_WAIT_S = float(os.environ.get("MEGACTLLM_ERROR_WAIT_S", "10"))


class UserError(Exception):
    """A mistake of the user's; the message says what was wrong and what to do."""


class ModelShapeError(UserError):
    """The model section contradicts the checkpoint it starts from."""


class MemoryFitError(UserError):
    """The run needs more memory per rank than the device (or the machine's free RAM) has."""


def user_error_types() -> tuple:
    """Every exception type whose message names a user's mistake: all derive from UserError."""
    return (UserError,)


def print_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def agree_on_error(error: Optional[BaseException], code: int = EXIT_USER_ERROR) -> int:
    """Collective over the default group: 0 when no rank failed, else `code` on every rank.

    Every rank must call it at the same point. Rank 0 prints the lowest failing rank's message.
    """
    import torch.distributed as dist

    message = None if error is None else str(error)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        if message is not None:
            print_error(message)
        return 0 if message is None else code
    messages: list = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    failed = [(rank, m) for rank, m in enumerate(messages) if m is not None]
    if not failed:
        return 0
    exit_with_on_sigterm(code)
    if dist.get_rank() == 0:
        rank, first = failed[0]
        print_error(first if rank == 0 else f"(rank {rank}) {first}")
    dist.barrier()  # nobody exits before rank 0 has printed (torchrun stops the rest at the first exit)
    return code


def exit_with_on_sigterm(code: int) -> None:
    """From here on, the launcher's SIGTERM (torchrun stops the other ranks at the first exit)
    ends this failing rank with the run's exit code, not -15: one failure, one code."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: exit_now(code))


def exit_now(code: int) -> None:
    """Leave at once with `code`: every rank of a failed run exits within moments of the others,
    before torchrun, seeing the first exit, signals the rest (which would then report -15)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def report_error_in_run(error: BaseException, code: int = EXIT_USER_ERROR) -> int:
    """Report a user error raised while training runs; returns the exit code for this rank.

    Ranks meet through the rendezvous store, not a collective (a peer may be blocked in one):
    each failing rank posts its message, waits up to a few seconds for the others, and the lowest
    rank that posted prints. A rank whose peers never post (they are stuck waiting for it) still
    prints its own message, so an error is never lost.
    """
    import torch.distributed as dist

    message = str(error)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        print_error(message)
        return code
    rank, world = dist.get_rank(), dist.get_world_size()
    exit_with_on_sigterm(code)
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set(f"megactllm/error/{rank}", message)
        keys = [f"megactllm/error/{r}" for r in range(world)]
        deadline = time.monotonic() + _STORE_WAIT_S
        posted = []
        while True:
            posted = [r for r, key in enumerate(keys) if store.check([key])]
            if len(posted) == world or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if rank == min(posted):
            print_error(message if rank == 0 else f"(rank {rank}) {message}")
    except Exception:  # the store itself is gone: say it here rather than not at all
        print_error(message if rank == 0 else f"(rank {rank}) {message}")
    return code
