"""The one error type conversion raises: a message that names the file and says what to do."""
from __future__ import annotations


class ConversionError(ValueError):
    """Bad or unsupported input to a conversion (missing shard, wrong architecture, vocab mismatch)."""


class VocabMismatchError(ConversionError):
    """The model's vocabulary and the tokenizer disagree."""
