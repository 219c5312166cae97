#!/usr/bin/env bash
# Set up the environment from scratch if needed, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup_env.sh
. .venv/bin/activate
python -m pytest -q tests "$@"
