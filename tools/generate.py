#!/usr/bin/env python
"""Complete a jsonl of prompts ({"prompt": ...} or {"messages": [...]}, other fields kept) into a jsonl.

    python tools/generate.py ctllm-2b-q4_0.gguf prompts.jsonl out.jsonl --max-tokens 256 --temperature 0
"""
import argparse
import sys

from megactllm.serve import EngineError, SamplingParams, load_engine
from megactllm.serve.generate import GenerateError, generate_jsonl


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help=".gguf file, HF LLaMA directory or megactllm checkpoint")
    p.add_argument("input", help="jsonl of prompts")
    p.add_argument("output", help="jsonl of completions")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            repeat_penalty=args.repetition_penalty, stop=args.stop, seed=args.seed)
    try:
        generate_jsonl(load_engine(args.model, threads=args.threads), args.input, args.output, params)
    except (EngineError, GenerateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
