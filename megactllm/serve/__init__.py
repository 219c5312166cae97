"""Run megactllm models: engines behind one interface (llama.cpp for GGUF files, transformers for
HF directories and megactllm checkpoints), chat with the model's template, and an OpenAI-compatible
HTTP server. No sampler or KV cache of our own: the engines' are used.

    from megactllm.serve import load_engine, SamplingParams
    engine = load_engine("ctllm-2b-q4_0.gguf")
    ids = engine.chat_tokens([{"role": "user", "content": "你好"}])
    print(engine.complete(ids, SamplingParams(max_tokens=64, temperature=0)).text)

    from megactllm.serve.run import serve
    serve(engine, host="127.0.0.1", port=8000, api_key=None)
"""
from megactllm.serve.engine import (
    Completion,
    Engine,
    EngineError,
    SamplingError,
    SamplingParams,
    StreamPiece,
    check_sampling,
    load_engine,
)

__all__ = ["Completion", "Engine", "EngineError", "SamplingError", "SamplingParams", "StreamPiece", "check_sampling", "load_engine"]
