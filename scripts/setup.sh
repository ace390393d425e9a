#!/usr/bin/env bash
# Creates .venv in the repository and installs quantlab with its test tools. Safe to run again.
# Where no torch is installed it installs the CPU build of torch 2.13.0, never a CUDA build by accident.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  # On Linux x86_64 PyPI's torch is a multi-GB CUDA build. Use a CPU wheel that pip already finds (a local
  # wheel house), else PyTorch's own CPU index.
  if python -m pip install --dry-run --no-deps -q --report - torch==2.13.0 2>/dev/null | grep -q '"version": "2.13.0+cpu"'; then
    python -m pip install -q torch==2.13.0
  else
    python -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# constraints.txt pins what the shipped checkpoint, the docs' numbers and the tests were produced with.
python -m pip install -q -c constraints.txt -e ".[dev,gguf]"
python -c "import torch, transformers, quantlab; print(f'quantlab {quantlab.__version__}: torch {torch.__version__}, transformers {transformers.__version__}')"
