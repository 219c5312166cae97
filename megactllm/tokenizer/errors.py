"""The tokenizer package's user errors: a file that is not there or not a tokenizer, a tokenizer
type or a training/extension input that cannot work. Both stay ValueError/FileNotFoundError for
callers that catch those."""
from __future__ import annotations

from megactllm.errors import UserError


class TokenizerFileError(UserError, ValueError):
    """A tokenizer file (or type, or training input) that cannot be used; the message names it."""


class TokenizerNotFoundError(UserError, FileNotFoundError):
    """A tokenizer path that does not exist."""
