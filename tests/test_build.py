"""quantlab build on the embedded model: artifacts, cache, determinism, manifest against the files on disk."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from quantlab.formats import Packed, get_format
from quantlab.models.loading import load_model, resolve_model
from quantlab.models.units import weight_units
from quantlab.recipe import load_recipe
from quantlab.stages import build as builder

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


def run_main(monkeypatch, capsys, *args):
    from quantlab import cli

    monkeypatch.setattr(sys, "argv", ["quantlab", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as done:
        code = done.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_cache_hit_and_force_rebuild_same_bytes(tmp_path, monkeypatch, capsys):
    recipe = REPO / "recipes" / "mxfp4.yaml"
    code, out, err = run_main(monkeypatch, capsys, "build", recipe, "--out", tmp_path)
    assert code == 0, err
    assert "built:" in out and str(tmp_path / "mxfp4") in out.replace("\n", "")
    first = files_of(tmp_path / "mxfp4")
    assert {"manifest.json", "packed.safetensors", "model/model.safetensors", "model/config.json"} <= set(first)

    code, out, _ = run_main(monkeypatch, capsys, "build", recipe, "--out", tmp_path)
    assert code == 0 and "cache hit" in out
    assert files_of(tmp_path / "mxfp4") == first  # untouched

    code, out, _ = run_main(monkeypatch, capsys, "build", recipe, "--out", tmp_path, "--force")
    assert code == 0 and "built:" in out
    again = files_of(tmp_path / "mxfp4")
    manifest_a, manifest_b = (json.loads(f.pop("manifest.json")) for f in (first, again))
    assert again == first  # every file but the manifest byte-identical
    manifest_a.pop("run"), manifest_b.pop("run")
    assert manifest_a == manifest_b  # and the manifest too, but for its timings and command
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def _packed_values(packed_file: Path, unit_name: str, description: dict) -> torch.Tensor:
    """The dequantized (out, in) matrix of one unit, read back from packed.safetensors alone."""
    with safe_open(packed_file, "pt") as f:
        matrices = {}
        for part, info in description["parts"].items():
            prefix = unit_name + ("" if part == "matrix" else f".{part}")
            if info["format"] == "keep":
                matrices[part] = f.get_tensor(prefix)
                continue
            data = {field: f.get_tensor(f"{prefix}.{field}") for field in info["fields"]}
            packed = Packed(info["format"], tuple(info["shape"]), data)
            matrices[part] = get_format(info["name"], **info["params"]).dequantize(packed).float()
    return matrices["a"] @ matrices["b"] if "a" in matrices else matrices["matrix"]


@pytest.mark.parametrize("recipe", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_builds_and_its_manifest_agrees_with_the_files(recipe, tmp_path):
    parsed = load_recipe(recipe)
    if (parsed.exports or parsed.preset) and not _has_llama_cpp():
        pytest.skip("this recipe needs quantlab[gguf] (llama-cpp-python)")
    result = builder.build(recipe, tmp_path)
    folder, manifest = result.path, result.manifest
    packed_file = folder / "packed.safetensors"
    with safe_open(packed_file, "pt") as f:
        described = json.loads(f.metadata()["quantlab"])
        packed_bytes = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    quantized = [row for row in manifest.tensors if row["format"] != "keep"]
    assert sum(row["stored_bytes"] for row in quantized) == packed_bytes
    for row in quantized:
        numel = row["shape"][0] * row["shape"][1]
        assert row["bits_per_weight"] == round(8 * row["stored_bytes"] / numel, 4)
    assert manifest.sizes["packed_safetensors_bytes"] == packed_file.stat().st_size
    assert manifest.sizes["model_safetensors_bytes"] == (folder / "model" / "model.safetensors").stat().st_size

    # The variant's weights are exactly what the packed tensors decode to; kept tensors are the baseline's.
    variant, _ = load_model(folder / "model", dtype=torch.float32)
    baseline, _ = load_model(resolve_model("zoo:tiny-gpt-oss"), dtype=torch.float32)
    units = {u.name: u for u in weight_units(variant)}
    variant_params, baseline_params = dict(variant.named_parameters()), dict(baseline.named_parameters())
    for row in manifest.tensors:
        unit = units[row["name"]]
        got = unit.read(variant_params)
        if row["format"] == "keep":
            assert torch.equal(got, unit.read(baseline_params)), row["name"]
        else:
            assert torch.equal(got, _packed_values(packed_file, row["name"], described[row["name"]])), row["name"]


def test_an_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    recipe = REPO / "recipes" / "mxfp4.yaml"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as if stopped while the packed tensors were being written

    monkeypatch.setattr(builder, "save_packed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        builder.build(recipe, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert not builder.build(recipe, tmp_path).cache_hit


def test_a_killed_build_never_looks_complete(tmp_path):
    """SIGKILL part-way: no artifact, or (if it had already finished) a complete one; the next build works and
    clears the dead process's temporary folder."""
    process = subprocess.Popen(
        [sys.executable, "-m", "quantlab", "build", str(REPO / "recipes" / "mxfp4.yaml"), "--out", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and not list(tmp_path.glob(".mxfp4.*.tmp")):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    artifact = tmp_path / "mxfp4"
    if artifact.exists():  # it finished before the kill landed
        manifest = json.loads((artifact / "manifest.json").read_text())
        assert manifest["sizes"]["packed_safetensors_bytes"] == (artifact / "packed.safetensors").stat().st_size
    result = builder.build(REPO / "recipes" / "mxfp4.yaml", tmp_path)
    assert (result.path / "manifest.json").is_file()
    assert not list(tmp_path.glob(".mxfp4.*.tmp"))
