#!/usr/bin/env bash
# README command 1: set up the environment, then run the whole DAG (default: config.yaml).
# Extra arguments go to snakemake, e.g. `bash scripts/run.sh --configfile configs/smoke.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export PATH="$PWD/.venv/bin:$PATH"
exec snakemake --cores all "$@"
