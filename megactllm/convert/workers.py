"""`--workers N`: groups (layers, the embedding, the head) converted in N processes.

Each process sets up once, a process group and what converts a group (the importer's layer builder
and writer, the exporter's reader), then converts the groups it is handed: setting up per group
would cost more than a layer takes. Processes are spawned, not forked: torch's thread pools and a
process group do not survive a fork.
"""
from __future__ import annotations

import atexit
import contextlib
from typing import Callable, Iterable

_CONVERT: dict = {}  # this worker process's converter, made by _start


def _start(setup: Callable, job) -> None:
    import torch

    from megactllm.output import configure_output

    configure_output(verbose=False)
    torch.set_num_threads(1)  # N processes share the cores
    stack = contextlib.ExitStack()
    atexit.register(stack.close)
    _CONVERT["group"] = setup(job, stack)


def _convert(group: str) -> str:
    _CONVERT["group"](group)
    return group


def convert_in_workers(setup: Callable, job, groups: Iterable[str], workers: int, done: Callable[[str], None]) -> None:
    """Convert `groups` in `workers` processes; `setup(job, exit_stack)` (a module-level function)
    runs once in each and returns the function that converts one group, durably before it returns."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_start,
                                                initargs=(setup, job)) as pool:
        futures = [pool.submit(_convert, group) for group in groups]
        for future in concurrent.futures.as_completed(futures):
            done(future.result())
