#!/usr/bin/env python
"""Chat with a model in the terminal: a GGUF file (llama.cpp), an HF directory or a megactllm
checkpoint (transformers). Multi-turn with the model's chat template; replies stream.
Commands: /reset (new conversation), /exit.

    python tools/chat.py ctllm-2b-q4_k_m.gguf --system "你是一个乐于助人的助手。" --temperature 0.7
"""
import argparse
import sys

from megactllm.errors import EXIT_USER_ERROR, UserError, print_error
from megactllm.serve import EngineError, SamplingError, SamplingParams, check_sampling, load_engine
from megactllm.serve.chat import ChatSession


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help=".gguf file, HF LLaMA directory or megactllm checkpoint")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            repeat_penalty=args.repetition_penalty, seed=args.seed)
    try:
        check_sampling(params)
        engine = load_engine(args.model, threads=args.threads)
    except SamplingError as e:
        print_error(f"--{e.field.replace('_', '-')}: {e}")
        return EXIT_USER_ERROR
    except UserError as e:
        print_error(str(e))
        return EXIT_USER_ERROR
    session = ChatSession(engine, args.system, params)
    print(f"{engine.info.name} ({engine.info.kind}, context {engine.info.context_length}); /reset, /exit", file=sys.stderr)
    while True:
        try:
            text = input("\n>>> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            session.reset()
            continue
        if not text:
            continue
        try:
            for piece in session.send(text):
                print(piece, end="", flush=True)
            print()
        except EngineError as e:
            print(f"\nerror: {e}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\n(interrupted)")


if __name__ == "__main__":
    sys.exit(main())
