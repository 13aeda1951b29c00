#!/usr/bin/env bash
# README command 2: set up the environment, then run the test suite (unit + workflow tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest -q "$@"
