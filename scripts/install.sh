#!/usr/bin/env bash
# Create ./.venv and install lsr with all extras. torch is pinned first to the CPU build:
# an unpinned torch would pull the multi-gigabyte CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# (this machine's pip configuration lists index locations that may be absent: hide those warnings)
quiet() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }
quiet .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
quiet .venv/bin/python -m pip install -q -e ".[all,test]"
