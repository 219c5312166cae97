#!/usr/bin/env python
"""OpenAI-compatible server over a GGUF file (llama.cpp) or an HF directory / megactllm checkpoint
(transformers). Binds 127.0.0.1 unless told otherwise; prints `listening on http://HOST:PORT`
once ready (--port 0 picks a free port); GET /health answers when it serves.

    python tools/serve.py --model ctllm-2b-q4_0.gguf --port 8000 [--api-key KEY]
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "你好"}]}'
"""
import argparse
import sys

from megactllm.errors import EXIT_USER_ERROR, UserError, print_error
from megactllm.serve.requests import Limits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=".gguf file, HF LLaMA directory or megactllm checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 = any free port (printed at start)")
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1/*")
    p.add_argument("--model-name", help="the id clients use (default: the file or directory name)")
    p.add_argument("--ctx", type=int, default=0, help="context length (GGUF; default: the model's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--logits-all", action="store_true", default=None,
                   help="keep all positions' logits (echo+logprobs on big models; on by default for small ones)")
    p.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes)
    p.add_argument("--max-prompt-tokens", type=int, default=0, help="default: the context length")
    p.add_argument("--max-tokens-cap", type=int, default=Limits.max_tokens_cap)
    p.add_argument("--max-queue", type=int, default=Limits.max_queue, help="requests waiting; more get 503")
    p.add_argument("--timeout", type=float, default=Limits.timeout_s, help="seconds per request, queue included")
    args = p.parse_args(argv)
    options = dict(threads=args.threads, name=args.model_name)
    if args.model.endswith(".gguf"):
        options.update(n_ctx=args.ctx, logits_all=args.logits_all)
    try:
        from megactllm.serve import load_engine
        from megactllm.serve.run import serve  # the server's packages, asked for before a model loads

        engine = load_engine(args.model, **options)
    except UserError as e:
        print_error(str(e))
        return EXIT_USER_ERROR
    limits = Limits(args.max_body_bytes, args.max_prompt_tokens, args.max_tokens_cap, args.max_queue, args.timeout)
    serve(engine, args.host, args.port, limits, args.api_key, args.model_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
