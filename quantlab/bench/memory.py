"""``quantlab bench build-memory``: peak memory of ``quantlab build`` against what it must hold.

Each measurement runs in a fresh process (its VmHWM), next to the peak of a process that only
imports quantlab and loads the same model (the floor any build pays). A build should hold the model once,
the packed output and one layer's temporaries, not the model twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from quantlab.models.loading import default_model, meta_model, resolve_model
from quantlab.stages.build_streaming import layer_groups
from quantlab.stages.synthetic import synthesize

LOAD_ONLY = """
import sys, torch
from pathlib import Path
from quantlab.models.loading import load_model, resolve_model
model, _ = load_model(resolve_model(sys.argv[1]))
print(sum(p.numel() * p.element_size() for p in model.parameters()))
"""


# The child's own peak: VmHWM of its address space. ru_maxrss would do on its own, but Linux folds the forking
# parent's resident size into it at exec, so a large parent (one that just wrote a synthetic model) inflates it.
_REPORT_PEAK = (
    "import atexit, resource, sys\n"
    "def _peak_kib():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            return int(line.split()[1])\n"
    "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "atexit.register(lambda: sys.stderr.write('PEAK_KIB %d\\n' % _peak_kib()))\n"
)


def _peak_of(code: str, *args: str) -> tuple[int, str]:
    """(peak resident bytes, stdout) of a fresh Python process running ``code`` with ``args``."""
    done = subprocess.run(
        [sys.executable, "-c", _REPORT_PEAK + code, *args], capture_output=True, text=True, check=False
    )
    peaks = [line for line in done.stderr.splitlines() if line.startswith("PEAK_KIB ")]
    if done.returncode != 0 or not peaks:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return int(peaks[-1].split()[1]) * 1024, done.stdout


BUILD = "import sys\nfrom quantlab.cli import main\nsys.argv = ['quantlab', *sys.argv[1:]]\nmain()\n"


def synthetic_model(folder: Path, hidden: int = 512, layers: int = 8, experts: int = 16) -> Path:
    """A randomly initialised gpt-oss of about 100M parameters (bf16), saved as a Hugging Face folder."""
    import shutil

    import torch
    import transformers

    tokenizer_source = resolve_model(default_model())  # its tokenizer files serve the synthetic model

    torch.manual_seed(0)
    config = transformers.GptOssConfig(
        hidden_size=hidden,
        intermediate_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        num_local_experts=experts,
        num_experts_per_tok=2,
        vocab_size=53,
        max_position_embeddings=128,
        sliding_window=64,
        tie_word_embeddings=False,
        layer_types=["sliding_attention", "full_attention"] * (layers // 2),
    )
    config.dtype = "bfloat16"
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_source / name, folder / name)
    return folder


def measure_build(model_source: str, format_name: str = "mxfp4") -> dict:
    """Peak memory of building ``format_name`` experts on ``model_source``, beside the load-only floor."""
    with tempfile.TemporaryDirectory(prefix="quantlab-memory-") as folder:
        recipe = Path(folder) / "memory.yaml"
        recipe.write_text(
            f"name: memory\nmodel: {model_source}\ngroups:\n  - select: {{component: experts}}\n    format: {format_name}\n"
        )
        load_peak, out = _peak_of(LOAD_ONLY, model_source)
        model_bytes = int(out.strip().splitlines()[-1])
        build_peak, out = _peak_of(BUILD, "build", str(recipe), "--out", folder, "--json")
        manifest = json.loads(out)
    largest = max(r["shape"][0] * r["shape"][1] for r in manifest["tensors"]) * 4  # one matrix in float32
    return {
        "model": model_source,
        "format": format_name,
        "model_bytes_in_memory": model_bytes,
        "largest_matrix_float32_bytes": largest,
        "packed_bytes": manifest["sizes"]["packed_safetensors_bytes"],
        "load_only_peak_bytes": load_peak,
        "build_peak_bytes": build_peak,
        "build_over_load_bytes": build_peak - load_peak,
        "build_over_load_vs_model": round((build_peak - load_peak) / model_bytes, 3),
    }


# --- the streaming build under an enforced memory limit ---------------------------------------------------------


def _resident_bytes(pid: int) -> int:
    """The process's resident memory now (VmRSS), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def run_under_limit(args: list[str], limit_bytes: int, poll_s: float = 0.02) -> dict:
    """Runs ``quantlab *args`` in a fresh process that is killed the moment its resident memory exceeds
    ``limit_bytes`` (sampled every ``poll_s``); its kernel-counted peak (VmHWM) is checked against the limit too,
    so a spike between two samples cannot pass unseen. Returns the peak, the verdict and stdout."""
    import time

    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        # files, not pipes: a manifest larger than a pipe's buffer would block the child while we only poll
        process = subprocess.Popen([sys.executable, "-c", _REPORT_PEAK + BUILD, *args], stdout=stdout, stderr=stderr)
        killed_at = None
        while process.poll() is None:
            resident = _resident_bytes(process.pid)
            if resident > limit_bytes:
                process.kill()
                killed_at = resident
                break
            time.sleep(poll_s)
        process.wait()
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    peaks = [line for line in err.splitlines() if line.startswith("PEAK_KIB ")]
    peak = int(peaks[-1].split()[1]) * 1024 if peaks else killed_at or 0
    return {
        "returncode": process.returncode,
        "peak_bytes": peak,
        "within_limit": killed_at is None and process.returncode == 0 and peak <= limit_bytes,
        "killed_at_bytes": killed_at,
        "stdout": out,
        "stderr_tail": err.strip().splitlines()[-1] if err.strip() else "",
    }


def measure_streaming_build(
    family: str,
    layers: int,
    folder: Path,
    experts: int | None = None,
    groups: str = "  - select: {component: experts}\n    format: mxfp4\n",
    calibration: str = "",
    ratio: float = 4.0,
    label: str = "mxfp4 experts",
) -> dict:
    """``quantlab build --stream`` of a synthetic ``family`` model under a memory limit of 1/``ratio`` of the
    model's in-memory size (what the in-memory build holds): its peak against the limit and the largest layer."""

    source = folder / f"{family}-{layers}l"
    if not (source / "config.json").is_file():
        synthesize(family, source, layers, experts=experts)
    model = meta_model(source)
    sizes = {name: p.numel() * p.element_size() for name, p in model.named_parameters()}
    model_bytes = sum(sizes.values())
    largest_label, largest = max(
        ((label_, sum(sizes[n] for n in names)) for label_, names in layer_groups(list(sizes))), key=lambda x: x[1]
    )
    limit = int(model_bytes / ratio)
    recipe = folder / "streamed.yaml"
    recipe.write_text(f"name: streamed\nmodel: {source}\n{calibration}groups:\n{groups}")
    run = run_under_limit(
        ["build", str(recipe), "--stream", "--out", str(folder / "store"), "--force", "--json"], limit
    )
    manifest = json.loads(run["stdout"]) if run["within_limit"] else {}
    return {
        "model": f"{family} shapes, {layers} layers" + (f", {experts} experts" if experts else ""),
        "recipe": label,
        "model_bytes_in_memory": model_bytes,
        "source_bytes_on_disk": sum(p.stat().st_size for p in source.glob("*.safetensors")),
        "largest_layer": largest_label,
        "largest_layer_bytes": largest,
        "limit_bytes": limit,
        "model_over_limit": round(model_bytes / limit, 2),
        "peak_bytes": run["peak_bytes"],
        "peak_over_largest_layer": round(run["peak_bytes"] / largest, 2),
        "within_limit": run["within_limit"],
        "failure": None if run["within_limit"] else (run["stderr_tail"] or f"killed at {run['killed_at_bytes']} bytes"),
        "build_seconds": manifest.get("run", {}).get("seconds", {}).get("total"),
    }
