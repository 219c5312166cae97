"""The `serve` extra's packages, asked for by name: one line saying what to install, not a traceback."""
from __future__ import annotations

import importlib

from megactllm.errors import UserError

INSTALL = 'pip install -e ".[serve]"'


class MissingExtraError(UserError):
    """A package of the `serve` extra is not installed."""


def require(purpose: str, *modules: str) -> None:
    """Import each module, or raise MissingExtraError naming the package and the install command."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            package = {"llama_cpp": "llama-cpp-python"}.get(module, module)
            raise MissingExtraError(f"{purpose} needs {package}, which is not installed: {INSTALL}") from None
