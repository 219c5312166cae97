"""Conversion outputs appear complete or not at all (common.atomic's directory, refused with ConversionError)."""
from __future__ import annotations

import os

from megactllm.common.atomic import atomic_output_dir as _atomic_output_dir
from megactllm.convert.errors import ConversionError


def atomic_output_dir(out_dir: str | os.PathLike, overwrite: bool = False):
    """Yield a staging directory that becomes `out_dir` on success; an existing one is a ConversionError."""
    return _atomic_output_dir(out_dir, overwrite=overwrite, exists_error=ConversionError)
