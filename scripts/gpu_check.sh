#!/usr/bin/env bash
# megactllm's GPU check: every stage of the GPU path measured in one command, nothing downloaded.
#
#   scripts/gpu_check.sh [--cpu] [--output DIR] [--minutes N] [--cmmlu DIR] [--eval-tokenizer FILE] [--only A,B]
#                        [--wheels DIR]
#
# Each stage is a row (ok / failed with its error / skipped with why, and its figures) in
# DIR/gpu_check.json and DIR/gpu_check.md (default DIR: gpu_check_out). A failed stage does not
# stop the next; the script exits 0 when no stage failed, 1 when any did (after measuring the rest). --cpu runs the stages it
# can with tiny shapes on the CPU (CI runs it: tests/test_gpu_check.py); the rest say "needs a GPU".
# On an offline node install the wheels of scripts/offline_wheels.sh first (README, GPU section) and
# pass --wheels DIR (or MEGACTLLM_WHEELS=DIR): the C++ build takes pybind11 from there when it was
# only a build-isolation requirement of `pip install -e .`.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m bench.gpu_check "$@"
