#!/usr/bin/env bash
# Installs what the tests need (scripts/setup.sh) and runs the test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
