"""Build megactllm: the Python package plus one pybind11 extension per csrc/*.cpp file.

Each `csrc/<name>.cpp` becomes the extension module `megactllm._<name>`, so adding a hot
loop in C++ is a matter of dropping a file in csrc/ and importing `megactllm._<name>`.
"""
import glob
import os

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

extensions = [
    Pybind11Extension(
        f"megactllm._{os.path.splitext(os.path.basename(src))[0]}",
        [os.path.relpath(src, HERE)],
        cxx_std=17,
        extra_compile_args=["-O3"],
    )
    for src in sorted(glob.glob(os.path.join(HERE, "csrc", "*.cpp")))
]

setup(
    name="megactllm",
    version="0.1.0",
    description="Chinese-centric LLM training on megatron-core: corpus to tokens to TP/PP/DP pretraining, SFT, DPO",
    packages=find_packages(include=["megactllm", "megactllm.*"]),
    ext_modules=extensions,
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.10",
    install_requires=[
        # A floor, not a pin: a site's own torch (NVIDIA's container, with TE and apex built on it)
        # must stay. megatron-core 0.16.1 needs >= 2.6. scripts/setup_env.sh installs the CPU pin
        # first, so this never pulls a multi-GB CUDA build here (tests/test_packaging.py).
        "torch>=2.6",
        "megatron-core==0.16.1",
        # dist_checkpointing's writer subprocess dies without psutil and the parent then hangs.
        "psutil",
        "numpy",
        "pyyaml",
        "sentencepiece",
        "tokenizers",
        "tensorboard",
        "matplotlib",
        "zstandard",
        "pyarrow",
        "safetensors",
        "transformers",
        "jieba",
        "opencc-python-reimplemented",
        # Offline language identification for corpus cleaning; the model ships inside the package.
        "langid",
        # SentencePiece model editing (vocabulary extension) and transformers' tokenizer conversion.
        "protobuf",
        # The chat template is Jinja, rendered by transformers' apply_chat_template for exported models.
        "jinja2",
        # JSON-lines parsing on the tokenize hot path (several times faster than json.loads).
        "orjson",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "datasketch", "openai", "lm-eval==0.4.13", "accelerate"],
        # Running and serving models: GGUF files (written with gguf, run and quantized by llama.cpp
        # through llama-cpp-python, which builds from source) and the OpenAI-compatible server.
        "serve": ["gguf>=0.17", "llama-cpp-python==0.3.36", "fastapi", "uvicorn"],
        # Weights & Biases logging (train.wandb_project).
        "wandb": ["wandb"],
    },
)
