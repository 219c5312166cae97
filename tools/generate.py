#!/usr/bin/env python
"""Complete a jsonl of prompts ({"prompt": ...} or {"messages": [...]}, other fields kept) into a jsonl.

    python tools/generate.py ctllm-2b-q4_0.gguf prompts.jsonl out.jsonl --max-tokens 256 --temperature 0
"""
import argparse
import sys

from megactllm.errors import EXIT_USER_ERROR, UserError, print_error
from megactllm.serve import SamplingError, SamplingParams, check_sampling, load_engine
from megactllm.serve.generate import generate_jsonl


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
        check_sampling(params)
        generate_jsonl(load_engine(args.model, threads=args.threads), args.input, args.output, params)
    except SamplingError as e:
        print_error(f"--{e.field.replace('_', '-')}: {e}")
        return EXIT_USER_ERROR
    except UserError as e:
        print_error(str(e))
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
