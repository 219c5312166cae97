"""A one-process gloo group for the duration of a conversion.

megatron-core's dist_checkpointing (and GPTModel's construction) expect torch.distributed to be
up even in a single process. A FileStore in a temporary directory avoids picking a TCP port that
another job on the machine may hold.
"""
from __future__ import annotations

import contextlib
import os
import tempfile

import torch.distributed as dist

from megactllm.convert.errors import ConversionError


@contextlib.contextmanager
def single_process_group():
    """Yield with a world of one; tears down only what it set up."""
    if dist.is_initialized():
        if dist.get_world_size() != 1:
            raise ConversionError(
                f"conversion runs in one process, but torch.distributed has {dist.get_world_size()} ranks; "
                "run tools/convert_checkpoint.py directly, not under torchrun"
            )
        yield
        return
    with tempfile.TemporaryDirectory(prefix="megactllm-convert-") as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        try:
            yield
        finally:
            from megatron.core import parallel_state

            if parallel_state.model_parallel_is_initialized():
                parallel_state.destroy_model_parallel()
            dist.destroy_process_group()
