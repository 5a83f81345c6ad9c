#!/usr/bin/env bash
# Install lsr with every extra into ./.venv (CPU torch pinned first) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# the layer rule (docs/ARCHITECTURE.md): a violation fails CI before any test runs
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest -q "$@"
