"""The on-disk checkpoint format, below training/, convert/ and eval/ which all read it.

One Checkpointer (checkpointer.py) saves, loads, finds the latest and verifies; each module
below it has one job:

    layout.py           where the files live, the latest pointer, the published iterations
    metadata.py         megactllm.json: what the weights are, how they were saved, the run's state
    migrations.py       FORMAT_VERSION and one named migration per older version
    manifest.py         every file's size and CRC-32, checked on resume, export and by hand
    publish.py          .partial -> metadata and manifest last -> rename -> latest pointer
    tokenizer_copy.py   the tokenizer and its side files inside the checkpoint
    optimizer_state.py  the optimizer's on-disk formats and megatron-core's Adam gaps
    parallel_layout.py  the saved layout against this run's
    disk_space.py       a save that does not fit: foreseen, or named when it happens
    async_save.py       saves that overlap training (one background request per checkpoint)
    extra_state.py      either layer spec's checkpoint into either spec
    shape.py            a recipe's model section filled from a checkpoint
    cli.py              `megactllm checkpoint verify|list`
"""
from megactllm.checkpoint.checkpointer import Checkpointer, Loaded, Verification
from megactllm.checkpoint.errors import CheckpointError, DamagedCheckpointError, DiskFullError
from megactllm.checkpoint.layout import (
    LATEST_FILE,
    METADATA_FILE,
    holds_checkpoints,
    iteration_dir,
    partial_dir,
    resolve_checkpoint_dir,
)
from megactllm.checkpoint.metadata import CheckpointMetadata, build_metadata, check_model_matches, read_metadata
from megactllm.checkpoint.migrations import FORMAT_VERSION
from megactllm.checkpoint.publish import publish_checkpoint

__all__ = [
    "Checkpointer", "Loaded", "Verification", "CheckpointError", "DamagedCheckpointError", "DiskFullError",
    "LATEST_FILE", "METADATA_FILE", "holds_checkpoints", "iteration_dir", "partial_dir", "resolve_checkpoint_dir",
    "CheckpointMetadata", "build_metadata", "check_model_matches", "read_metadata", "FORMAT_VERSION",
    "publish_checkpoint",
]
