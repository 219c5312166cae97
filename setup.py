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
    # The subjects of CMMLU, C-Eval and MMLU (display names and categories, equal to lm-eval's).
    package_data={"megactllm.eval.tasks": ["subjects/*.json"]},
    ext_modules=extensions,
    # One command for every stage (megactllm.cli); tools/*.py are the same mains, run from a checkout.
    entry_points={"console_scripts": ["megactllm=megactllm.cli:console_main"]},
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
        "zstandard",
        "safetensors",
        "transformers",
        # SentencePiece model editing (vocabulary extension) and transformers' tokenizer conversion.
        "protobuf",
        # The chat template is Jinja, rendered by transformers' apply_chat_template for exported models.
        "jinja2",
        # JSON-lines parsing on the tokenize hot path (several times faster than json.loads).
        "orjson",
    ],
    extras_require={
        # Corpus work: parquet input, Chinese word segmentation (cleaning, vocabulary mining),
        # traditional -> simplified, offline language identification (its model ships in the package).
        # Kept out of the core so the core's wheels fit an offline GPU node (scripts/offline_wheels.sh).
        "corpus": ["pyarrow", "jieba", "opencc-python-reimplemented", "langid"],
        # TensorBoard logs (train.tensorboard_dir) and plots (loss curves, cleaning report).
        "monitor": ["tensorboard", "matplotlib"],
        # Weights & Biases logging (train.wandb_project); WANDB_MODE=offline works with no network.
        "wandb": ["wandb>=0.19"],
        "test": ["pytest", "pytest-timeout", "datasketch", "openai", "lm-eval==0.4.13", "accelerate", "schemathesis>=4.0",
                 # the numerical reference of the GRPO loss (tests/test_grpo_loss.py)
                 "trl>=1.16"],
        # Running and serving models: GGUF files (written with gguf, run and quantized by llama.cpp
        # through llama-cpp-python, which builds from source) and the OpenAI-compatible server.
        # The API key is checked on the routed path (the ASGI scope), so no starlette version's URL
        # rebuilding from the Host header matters; tested with fastapi 0.165 / starlette 1.10.
        "serve": ["gguf>=0.17", "llama-cpp-python==0.3.36", "fastapi>=0.115", "starlette>=0.40", "uvicorn"],
    },
)
