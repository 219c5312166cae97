#!/usr/bin/env bash
# Create (or reuse) .venv and install megactllm with its C++ extensions and test dependencies.
# torch is pinned to the CPU build on local disk; an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
. .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel pybind11
python -m pip install -q torch==2.13.0
# llama-cpp-python compiles llama.cpp (minutes, once; pip caches the wheel). Its multimodal
# library (mtmd) is not used by megactllm: skipping it shortens the build.
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" python -m pip install -q -e ".[test,serve,corpus,monitor,wandb]"
