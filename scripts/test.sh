#!/usr/bin/env bash
# Installs what the tests need (scripts/setup.sh; Debian's chromium for the report's browser test), runs ruff
# and mypy, then the test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  # tests/test_report.py screenshots the HTML report in a real headless browser; without one it skips.
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 ||
   { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }) ||
    echo "chromium could not be installed: the report's browser test will skip"
fi
# The habits CI keeps: ruff (lint rules and formatting, pyproject.toml) and mypy on the whole package.
.venv/bin/ruff check quantlab tests
.venv/bin/ruff format --check quantlab tests
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
