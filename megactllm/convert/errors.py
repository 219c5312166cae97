"""The error conversion raises: a message that names the file and says what to do."""
from __future__ import annotations

from megactllm.errors import UserError
from megactllm.tokenizer.vocab_fit import VocabMismatchError

__all__ = ["ConversionError", "VocabMismatchError"]


class ConversionError(UserError, ValueError):
    """Bad or unsupported input to a conversion (missing shard, wrong architecture, vocab mismatch)."""
