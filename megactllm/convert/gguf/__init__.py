"""GGUF export for llama.cpp (and ollama, LM Studio...): float types written here with the `gguf`
library, quantized types by llama.cpp's own quantizer.

    from megactllm.convert.gguf import export_gguf
    export_gguf("runs/ctllm-2b", "ctllm-2b-q4_k_m.gguf", outtype="q4_k_m")   # or an HF LLaMA directory
"""
from megactllm.convert.gguf.export import OUTTYPES, GGUFExportResult, export_gguf

__all__ = ["OUTTYPES", "GGUFExportResult", "export_gguf"]
