#!/usr/bin/env bash
# The wheels an offline GPU node needs to install megactllm beside its site's torch.
#
#   scripts/offline_wheels.sh DIR [--python 3.12] [--max-mib 64]
#
# Resolves megactllm's install_requires (and its build requirements: setuptools, wheel, pybind11)
# for CPython --python on x86_64 Linux, keeps what is reachable without passing through torch (torch,
# its CUDA wheels and what only torch needs stay the site's), builds pure-Python wheels for the
# requirements published only as source, downloads the rest (pip download --only-binary=:all:
# --no-deps), prints each wheel's size and the total, and fails when the total is over --max-mib.
# On the node:  pip install --no-index --find-links DIR -e .     (keeps the site's torch)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: $0 DIR [--python 3.12] [--max-mib 64]" >&2
  exit 2
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m bench.gpu_check.wheels "$@"
