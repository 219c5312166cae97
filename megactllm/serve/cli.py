"""The commands that run a model: chat, generate and serve (`megactllm <command>`, or
`python tools/{chat,generate,serve}.py`, which call the same mains)."""
from __future__ import annotations

import sys

from megactllm.common.command import CommandParser, entry_point, need_path, user_errors
from megactllm.errors import UserError

CHAT = """Chat with a model in the terminal: a GGUF file (llama.cpp), an HF directory or a megactllm
checkpoint (transformers). Multi-turn with the model's chat template; replies stream.
Commands: /reset (new conversation), /exit.

    megactllm chat ctllm-2b-q4_k_m.gguf --system "你是一个乐于助人的助手。" --temperature 0.7
"""

GENERATE = """Complete a jsonl of prompts ({"prompt": ...} or {"messages": [...]}, other fields kept) into a jsonl.

    megactllm generate ctllm-2b-q4_0.gguf prompts.jsonl out.jsonl --max-tokens 256 --temperature 0
"""

SERVE = """OpenAI-compatible server over a GGUF file (llama.cpp) or an HF directory / megactllm checkpoint
(transformers). Binds 127.0.0.1 unless told otherwise; prints `listening on http://HOST:PORT`
once ready (--port 0 picks a free port); GET /health answers when it serves.

    megactllm serve --model ctllm-2b-q4_0.gguf --port 8000 [--api-key KEY]
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "你好"}]}'
"""


class SamplingFlagError(UserError):
    """A sampling flag outside what every engine accepts, named by its flag."""


def _checked(params):
    """The sampling values the server would refuse, refused here by flag (--max-tokens 0, ...)."""
    from megactllm.serve import SamplingError, check_sampling

    try:
        check_sampling(params)
    except SamplingError as e:
        raise SamplingFlagError(f"--{e.field.replace('_', '-')}: {e}") from None
    return params


def _load(model: str, flag: str, **options):
    from megactllm.serve import EngineError, load_engine

    with user_errors(EngineError):
        return load_engine(need_path(model, flag), **options)


@entry_point
def chat_main(argv=None, prog=None) -> int:
    from megactllm.serve import EngineError, SamplingParams
    from megactllm.serve.chat import ChatSession

    p = CommandParser(prog=prog, description=CHAT)
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
    params = _checked(SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                     top_k=args.top_k, repeat_penalty=args.repetition_penalty, seed=args.seed))
    engine = _load(args.model, "model", threads=args.threads)
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
        except EngineError as e:  # one turn failed (too long, ...): say so and keep the session
            print(f"\nerror: {e}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\n(interrupted)")


@entry_point
def generate_main(argv=None, prog=None) -> int:
    from megactllm.serve import SamplingParams
    from megactllm.serve.generate import GenerateError, generate_jsonl

    p = CommandParser(prog=prog, description=GENERATE)
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
    # Cheapest first, so a bad run stops before a model loads: the flags, the extra a GGUF needs,
    # the two paths, and only then the engine.
    params = _checked(SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                     top_k=args.top_k, repeat_penalty=args.repetition_penalty, stop=args.stop,
                                     seed=args.seed))
    if args.model.endswith(".gguf"):
        from megactllm.serve.extras import require

        require("running a GGUF file", "llama_cpp")
    need_path(args.model, "model")
    need_path(args.input, "input", "file")
    engine = _load(args.model, "model", threads=args.threads)
    from megactllm.serve import EngineError

    with user_errors(EngineError, GenerateError):
        generate_jsonl(engine, args.input, args.output, params)
    return 0


@entry_point
def serve_main(argv=None, prog=None) -> int:
    # Only the flags' defaults before parsing: --help works without the serve extra, whose
    # missing packages are named when the server is started (serve.run imports it).
    from megactllm.serve.requests import Limits

    p = CommandParser(prog=prog, description=SERVE)
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
    from megactllm.serve.run import serve

    options = dict(threads=args.threads, name=args.model_name)
    if args.model.endswith(".gguf"):
        options.update(n_ctx=args.ctx, logits_all=args.logits_all)
    engine = _load(args.model, "--model", **options)
    limits = Limits(args.max_body_bytes, args.max_prompt_tokens, args.max_tokens_cap, args.max_queue, args.timeout)
    serve(engine, args.host, args.port, limits, args.api_key, args.model_name)
    return 0
