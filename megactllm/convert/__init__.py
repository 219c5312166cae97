"""Hugging Face <-> megactllm checkpoints, vocabulary checks and vocabulary extension.

    from megactllm.convert import export_to_hf, import_from_hf, check_tokenizer_fits
    export_to_hf("runs/ctllm-2b", "hf/ctllm-2b")                 # any saved TP/PP layout
    result = import_from_hf("hf/llama-2-7b", "ckpt/llama2-7b")  # then checkpoint.pretrained=result.checkpoint
    check_tokenizer_fits(model_config, tokenizer)                # before training: raises VocabMismatchError

Conversion needs no GPU and streams tensors (see export.py and importer.py for memory bounds).
"""
from megactllm.convert.errors import ConversionError, VocabMismatchError
from megactllm.convert.export import export_to_hf
from megactllm.convert.importer import import_from_hf
from megactllm.tokenizer.vocab_fit import check_tokenizer_fits

__all__ = ["ConversionError", "VocabMismatchError", "check_tokenizer_fits", "export_to_hf", "import_from_hf"]
