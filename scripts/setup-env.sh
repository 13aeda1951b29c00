#!/usr/bin/env bash
# Create .venv and install dlbench + pinned dependencies (requirements.lock as constraints).
# Idempotent: reinstalls only when pyproject.toml or requirements.lock change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else "dlbench needs Python 3.11 or 3.12")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.dlbench-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup-env: installing dlbench and pinned dependencies into .venv (first time: a few minutes)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check "pip==25.3"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -e ".[test]"
  echo "$want" > "$stamp"
fi
