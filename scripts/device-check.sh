#!/usr/bin/env bash
# The GPU checks, for a GPU machine with no network (the device tool's H200: python3 there holds CUDA torch and
# transformers). Run from the repository root:
#
#     bash scripts/device-wheels.sh            # here, where pip reaches PyPI: the missing packages as py3.12 wheels in .whl/
#     bash scripts/device-check.sh [OUT]       # there, with .whl carried: results under OUT (default ./device-out)
#
# 1. the CUDA tests (every format stores the same bytes on CUDA as on the CPU);
# 2. a synthetic gpt-oss-20b-shaped model (released widths, 32 experts, MXFP4 release layout), built layer by layer
#    (build --stream) with its matrices quantized on the GPU and, in the same run, on the CPU: wall times and
#    their ratio, and the two variants' packed bytes compared;
# 3. measure of the GPU-built variant against its baseline, and a short evaluation, where lm-eval is installed.
# Nothing here is a test CI runs; no test depends on it.
set -euo pipefail
OUT=${1:-device-out}
LAYERS=${QUANTLAB_DEVICE_LAYERS:-4}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
QL="$PY -m quantlab"

{
  echo "# device check $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  $PY - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.cuda.is_available())
missing = [m for m in ("pydantic", "typer", "rich", "safetensors", "transformers", "gguf", "scipy", "yaml", "lm_eval")
           if importlib.util.find_spec(m) is None]
print("missing:", ", ".join(missing) or "nothing")
EOF
} 2>&1 | tee "$OUT/environment.txt"

echo "## CUDA tests" | tee "$OUT/cuda-tests.txt"
$PY -m pytest -q tests/test_formats_cuda.py -p no:cacheprovider 2>&1 | tail -5 | tee -a "$OUT/cuda-tests.txt"

WORK=$(mktemp -d /tmp/quantlab-device.XXXX)
$QL zoo synth gpt-oss-20b --out "$WORK/gpt-oss-20b-${LAYERS}l" --layers "$LAYERS"
cat > "$WORK/mxfp4-int4.yaml" <<EOF
name: mxfp4-int4
model: $WORK/gpt-oss-20b-${LAYERS}l
groups:
  - {name: experts, select: {component: experts}, format: mxfp4}
  - {name: attention, select: {component: attention}, format: {name: int4, group_size: 32}}
EOF
for device in cuda cpu; do
  start=$(date +%s.%N)
  QUANTLAB_DEVICE=$device $QL build "$WORK/mxfp4-int4.yaml" --stream --out "$WORK/store-$device" --json > "$OUT/build-$device.json"
  echo "$device $(echo "$(date +%s.%N) - $start" | bc)" >> "$OUT/build-seconds.txt"
done
$PY - "$WORK" "$OUT" <<'EOF'
import json, sys
from pathlib import Path
import torch
from safetensors import safe_open
work, out = Path(sys.argv[1]), Path(sys.argv[2])
def packed(store):
    tensors = {}
    for f in sorted((store / "mxfp4-int4").glob("packed-*.safetensors")):
        with safe_open(f, "pt") as h:
            tensors |= {k: h.get_tensor(k) for k in h.keys()}
    return tensors
gpu, cpu = packed(work / "store-cuda"), packed(work / "store-cpu")
same = set(gpu) == set(cpu) and all(torch.equal(gpu[k], cpu[k]) for k in cpu)
seconds = dict(line.split() for line in (out / "build-seconds.txt").read_text().splitlines())
summary = {"packed_tensors": len(cpu), "same_bytes_gpu_and_cpu": same,
           "build_seconds": {k: float(v) for k, v in seconds.items()},
           "cpu_over_gpu": round(float(seconds["cpu"]) / float(seconds["cuda"]), 2)}
(out / "build-summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
start=$(date +%s.%N)
$QL measure mxfp4-int4 --artifacts "$WORK/store-cuda" --tokens 2048 --json > "$OUT/measure.json" 2> "$OUT/measure.err" || true
echo "measure $(echo "$(date +%s.%N) - $start" | bc) s" | tee -a "$OUT/build-seconds.txt"
if $PY -c "import lm_eval" 2>/dev/null; then
  $QL eval mxfp4-int4 --tasks zoo_gpqa_style --limit 50 --artifacts "$WORK/store-cuda" --json > "$OUT/eval.json" 2> "$OUT/eval.err" || true
fi
echo "results in $OUT"
