"""Quantized GGUF types, made by llama.cpp's own quantizer (llama_model_quantize via llama-cpp-python)."""
from __future__ import annotations

import os
from pathlib import Path

from megactllm.convert.errors import ConversionError

# outtype -> name of llama.cpp's llama_ftype constant
QUANT_TYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}


def quantize_gguf(src: Path, dst: Path, outtype: str, threads: int = 0) -> None:
    """Write `dst`, the `outtype` quantization of the float GGUF `src`."""
    try:
        import llama_cpp
    except ImportError as e:
        raise ConversionError(f"quantizing to {outtype} needs llama-cpp-python (pip install -e '.[serve]'): {e}") from None
    if outtype not in QUANT_TYPES:
        raise ConversionError(f"unknown quantized type {outtype!r}; use one of {sorted(QUANT_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[outtype])
    params.nthread = threads or (os.cpu_count() or 1)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise ConversionError(f"llama.cpp could not quantize {src} to {outtype} (llama_model_quantize returned {rc}); see its log above")
