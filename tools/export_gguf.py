#!/usr/bin/env python
"""Export a megactllm checkpoint (any TP/PP layout) or an HF LLaMA directory to one GGUF file for
llama.cpp, ollama and friends. Float types are written directly; q8_0, q4_0 and q4_k_m are made
from the float file by llama.cpp's own quantizer (llama-cpp-python).

    python tools/export_gguf.py runs/ctllm-2b ctllm-2b-q4_k_m.gguf --outtype q4_k_m
    python tools/export_gguf.py hf/ctllm-2b ctllm-2b-f16.gguf --outtype f16
"""
import argparse
import sys

from megactllm.convert import ConversionError
from megactllm.convert.gguf import OUTTYPES, export_gguf


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="megactllm checkpoint (run or iter_XXXXXXX dir) or HF LLaMA directory")
    p.add_argument("out", help="output .gguf file (written atomically)")
    p.add_argument("--outtype", choices=OUTTYPES, default="f16")
    p.add_argument("--tokenizer", help="SentencePiece tokenizer.model (default: the checkpoint's / the directory's)")
    p.add_argument("--threads", type=int, default=0, help="quantizer threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        result = export_gguf(args.src, args.out, args.outtype, args.tokenizer, args.overwrite, args.threads)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
