"""What a run prints: the one place that decides which third-party messages a user sees.

    configure_output(verbose=args.verbose)     # first thing in an entry point's main()

By default:
- third-party warnings that say nothing a user can act on are dropped, each by its exact
  message (KNOWN_NOISE below), never by module or category: a new warning still shows;
- rank 0 prints progress; every other rank prints only errors (its Python warnings and log
  records below ERROR are dropped, since rank 0 prints the same ones);
- third-party progress bars (transformers' "Loading weights" and "Writing model shards", the
  Hugging Face Hub's) are off: megactllm reports its own progress, and theirs printed after our
  "done" lines.
`--verbose` on the entry points, or MEGACTLLM_VERBOSE=1, shows everything. Errors (exceptions,
`error: ...` lines, log records at ERROR and above) are never filtered.
"""
from __future__ import annotations

import logging
import os
import re
import warnings

from megactllm.common.env import launch_rank

VERBOSE_ENV = "MEGACTLLM_VERBOSE"

# (message regex, category, why it says nothing to the user). Matched at the start of the message.
KNOWN_NOISE = [
    # megatron-core without Apex/TE falls back to torch implementations: expected on every CPU run.
    (r"Transformer Engine and Apex are not installed\. Falling back to ", UserWarning, "expected fallback"),
    (r"Apex is not installed\. Falling back to Torch Norm", UserWarning, "expected fallback"),
    # megatron-core's own TransformerConfig default triggers its deprecation note; we set no cuda_graph_scope.
    (r"full scope is deprecated\. Use empty cuda_graph_scope", UserWarning, "megatron-internal default"),
    # megatron-core calls torch's old collective names; nothing the user can change.
    (r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning, "megatron-internal call"),
    (r"`torch\.distributed\.reduce_scatter_tensor` is deprecated", FutureWarning, "megatron-internal call"),
    # megatron-core's checkpoint loader calls torch's old DCP name; nothing the user can change.
    (r"`load_state_dict` is deprecated and will be removed", FutureWarning, "megatron-internal call"),
    # megatron-core's dist checkpointing builds torch ShardedTensors; nothing the user can change.
    (r"Please use DTensor instead and we are deprecating ShardedTensor", FutureWarning, "megatron-internal call"),
    # The streamed import saves each group in one process on purpose (convert.dist_writer, no_dist=True).
    (r"torch\.distributed is disabled, unavailable or uninitialized, assuming the intent is to save in a single process",
     UserWarning, "intended single-process save"),
]
# The Hugging Face Hub's switch for its bars and transformers' (read when they are imported).
PROGRESS_BARS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"
# Only meaningful with CUDA streams: on CPU there is no device connection to set.
_CPU_ONLY_NOISE = [
    (r"When using sequence parallelism it is recommended to set the environment variable CUDA_DEVICE_MAX_CONNECTIONS",
     UserWarning, "no CUDA streams on CPU"),
]
# megatron-core loggers whose INFO records repeat on every rank (dataset index building, ...).
_CHATTY_LOGGERS = ("megatron.core",)


def verbose_requested(verbose: bool = False) -> bool:
    return verbose or os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def configure_output(verbose: bool = False, rank: int | None = None, cuda: bool | None = None) -> bool:
    """Install the filters for this process; returns whether output is verbose (nothing filtered)."""
    if verbose_requested(verbose):
        os.environ[VERBOSE_ENV] = "1"  # child processes (dataloader workers, tools) follow
        return True
    rank = launch_rank() if rank is None else rank
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    noise = KNOWN_NOISE + ([] if cuda else _CPU_ONLY_NOISE)
    for pattern, category, _why in noise:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    disable_third_party_progress_bars()
    if rank != 0:
        # Rank 0 prints the same warnings and progress; other ranks speak only on errors.
        warnings.filterwarnings("ignore")
        for name in ("", *_CHATTY_LOGGERS):
            logging.getLogger(name).setLevel(logging.ERROR)
    return False


def disable_third_party_progress_bars() -> None:
    """transformers' and the Hub's tqdm bars off, in this process and the ones it starts (a user's
    own setting of the variable wins)."""
    import sys

    os.environ.setdefault(PROGRESS_BARS_ENV, "1")
    if os.environ[PROGRESS_BARS_ENV].strip().lower() in ("", "0", "false", "no"):
        return
    if "transformers" in sys.modules:  # imported already: its switch was read at import
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def noise_patterns(cuda: bool = False) -> list[re.Pattern]:
    """The compiled messages configure_output drops (for tests and for documentation)."""
    return [re.compile(p) for p, _c, _w in KNOWN_NOISE + ([] if cuda else _CPU_ONLY_NOISE)]
