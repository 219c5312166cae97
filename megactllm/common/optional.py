"""Optional dependencies: imported where used, refused in one line that says what to install.

The core install (training, conversion, evaluation) stays small enough to carry to an offline GPU
node as wheels (scripts/offline_wheels.sh); corpus work and plots are extras:
    corpus:  pyarrow (parquet input), jieba (Chinese words), opencc, langid (cleaning)
    monitor: tensorboard (logging.tensorboard_dir), matplotlib (loss curves, cleaning plots)
    wandb:   wandb (wandb.project, Weights & Biases logging)
"""
from __future__ import annotations

import importlib
from types import ModuleType

from megactllm.errors import UserError

EXTRAS = {
    "pyarrow": "corpus",
    "jieba": "corpus",
    "opencc": "corpus",
    "langid": "corpus",
    "tensorboard": "monitor",
    "matplotlib": "monitor",
    "wandb": "wandb",
}


class MissingDependencyError(UserError, ImportError):
    """An optional package a feature needs is not installed."""


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` (e.g. "pyarrow.parquet"), or say which extra brings it and what needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        how = f'pip install "megactllm[{extra}]" (or pip install {top})' if extra else f"pip install {top}"
        raise MissingDependencyError(f"{purpose} needs {top}, which is not installed: {how}") from e
