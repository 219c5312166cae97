"""What can go wrong with a checkpoint, as user errors (one `error:` line, exit 2)."""
from __future__ import annotations

from megactllm.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable, of another shape or of an unknown format."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files are not the ones its manifest (or storage index) records."""


class DiskFullError(CheckpointError, OSError):
    """A save that does not fit on its filesystem (found before writing, or while writing)."""
