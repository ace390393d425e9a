"""``quantlab build --stream``: the checkpoint read layer by layer in the hub's layout gives what transformers
loads, and the streamed variant is the in-memory build's, value for value and packed byte for packed byte."""

import pytest
import torch
from conftest import small_family_config as _small
from safetensors import safe_open

from quantlab.errors import UserError
from quantlab.models.checkpoint import Checkpoint
from quantlab.models.loading import load_model
from quantlab.stages import build as builder
from quantlab.stages.synthetic import write_checkpoint

FAMILIES = ["gpt-oss-20b", "qwen3-30b-a3b", "mixtral-8x7b", "olmoe-1b-7b"]


@pytest.fixture(scope="module", params=FAMILIES)
def hub_checkpoint(request, tmp_path_factory):
    """A small-width checkpoint of the family in its hub layout, sharded (gpt-oss: MXFP4 experts)."""
    folder = tmp_path_factory.mktemp(request.param) / "model"
    return request.param, write_checkpoint(_small(request.param), folder, shard_bytes=40_000)


def test_checkpoint_reads_every_parameter_as_transformers_loads_it(hub_checkpoint):
    _, folder = hub_checkpoint
    model, _ = load_model(folder)
    loaded = dict(model.named_parameters())
    read = Checkpoint(folder).read(list(loaded), dtype=next(iter(loaded.values())).dtype)
    assert set(read) == set(loaded)
    for name, value in loaded.items():
        assert torch.equal(read[name], value.detach()), name


def _packed(path) -> dict:
    tensors = {}
    for file in sorted(path.glob("packed*.safetensors")):
        with safe_open(file, "pt") as f:
            tensors |= {k: f.get_tensor(k) for k in f.keys()}
    return tensors


def _built_both_ways(folder, body: str, tmp_path) -> dict:
    """The recipe ``body`` on ``folder`` built in memory and streamed: {"memory": result, "stream": result}."""
    results = {}
    for mode in ("memory", "stream"):
        recipe = tmp_path / f"{mode}.yaml"
        recipe.write_text(f"name: {mode}\nmodel: {folder}\n{body}")
        results[mode] = builder.build(recipe, tmp_path / "artifacts", stream=mode == "stream")
    return results


def test_streamed_build_is_the_in_memory_build(hub_checkpoint, tmp_path):
    family, folder = hub_checkpoint
    body = (
        "groups:\n  - select: {component: experts}\n    format: mxfp4\n"
        "  - select: {component: attention}\n    format: {name: int4, group_size: 32}\n"
        "  - select: {component: lm_head}\n    format: {name: int4, group_size: 16}\n"
        "exports: [gguf]\n"
    )
    results = _built_both_ways(folder, body, tmp_path)
    memory, stream = results["memory"], results["stream"]
    assert stream.manifest.run["streamed"] is True
    layers = _small(family)["num_hidden_layers"]
    assert len(list((stream.path / "model").glob("*.safetensors"))) == layers + 3  # embeddings, norm, head alone
    assert stream.manifest.tensors == memory.manifest.tensors
    assert stream.manifest.stored_float32 == memory.manifest.stored_float32
    ours, theirs = _packed(stream.path), _packed(memory.path)
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    streamed, _ = load_model(stream.path / "model")
    built, _ = load_model(memory.path / "model")
    mine = dict(streamed.named_parameters())
    for name, value in built.named_parameters():
        assert mine[name].dtype == value.dtype and torch.equal(mine[name], value), name
    # the GGUF written from the shards one tensor at a time is the in-memory build's file, byte for byte
    gguf_stream, gguf_memory = stream.manifest.exports["gguf"], memory.manifest.exports["gguf"]
    assert gguf_stream["tensor_types"] == gguf_memory["tensor_types"]
    assert {t["type"] for t in gguf_memory["tensor_types"]} >= {"F32", "MXFP4"}
    assert (stream.path / "model.gguf").read_bytes() == (memory.path / "model.gguf").read_bytes()


def test_streamed_native_export_holds_the_in_memory_export(tmp_path):
    """gpt-oss's native MXFP4 checkpoint written a layer at a time (sharded, as the release is): the in-memory
    export's tensors and config, and transformers loads it to the variant's values."""
    folder = write_checkpoint(_small("gpt-oss-20b"), tmp_path / "model", shard_bytes=40_000)
    body = "groups:\n  - select: {component: experts}\n    format: mxfp4\nexports: [native]\n"
    results = _built_both_ways(folder, body, tmp_path)
    streamed, built = (results[m].path / "native" for m in ("stream", "memory"))
    assert len(list(streamed.glob("model-*.safetensors"))) == _small("gpt-oss-20b")["num_hidden_layers"] + 3
    ours = {k: v for f in sorted(streamed.glob("model-*.safetensors")) for k, v in _tensors(f).items()}
    theirs = _tensors(built / "model.safetensors")
    assert set(ours) == set(theirs) and any(k.endswith("_blocks") for k in theirs)
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in theirs)
    assert (streamed / "config.json").read_text() == (built / "config.json").read_text()
    loaded, _ = load_model(streamed)
    variant, _ = load_model(results["stream"].path / "model")
    mine = dict(loaded.named_parameters())
    assert all(torch.equal(mine[n], v) for n, v in variant.named_parameters())


def _tensors(path) -> dict:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_what_does_not_stream_is_one_line(tmp_path):
    recipe = tmp_path / "preset.yaml"
    recipe.write_text("name: p\nmodel: zoo:tiny-gpt-oss\npreset: gguf-q4_k_m\nexports: [gguf]\n")
    with pytest.raises(UserError, match="preset: a llama.cpp preset is resolved over the whole model"):
        builder.build(recipe, tmp_path / "artifacts", stream=True)
    recipe.write_text(
        "name: p\nmodel: zoo:tiny-gpt-oss\ngroups:\n  - select: {component: experts}\n    format: int8\n"
        "exports: [gguf, compressed-tensors]\n"
    )
    with pytest.raises(UserError, match="exports: the compressed-tensors export writes one whole file"):
        builder.build(recipe, tmp_path / "artifacts", stream=True)
    assert not (tmp_path / "artifacts").exists()


def test_streamed_gptq_is_the_in_memory_gptq_and_sequential_differs(hub_checkpoint, tmp_path, monkeypatch):
    """Statistics layer by layer (each layer's Hessians freed before the next is read), here one matrix's Hessian
    at a time, are the in-memory build's one pass; feeding each layer the quantized layers' outputs
    (``sequential``) changes the layers after the first."""
    from quantlab.stages import layerwise

    monkeypatch.setattr(layerwise, "HESSIAN_BYTES", 1)  # every matrix its own chunk: the layer runs once per matrix
    _, folder = hub_checkpoint
    body = (
        'calibration: {dataset: "zoo:aime-style", samples: 20, sequence_length: 32, seed: 0SEQ}\ngroups:\n'
        "  - select: {component: [experts, attention, lm_head]}\n    format: {name: int4, group_size: 16}\n"
        "    method: {name: gptq, min_tokens: 8}\n"
    )
    results = {}
    for mode, stream, sequential in (("memory", False, ""), ("stream", True, ""), ("seq", True, ", sequential: true")):
        recipe = tmp_path / f"{mode}.yaml"
        recipe.write_text(f"name: {mode}\nmodel: {folder}\n{body.replace('SEQ', sequential)}")
        results[mode] = builder.build(recipe, tmp_path / "artifacts", stream=stream)
    memory, stream, sequential = (results[m].manifest.tensors for m in ("memory", "stream", "seq"))
    assert any(r.get("method", "").startswith("gptq") and "method_fallback" not in r for r in memory)
    assert stream == memory
    ours, theirs = _packed(results["stream"].path), _packed(results["memory"].path)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    changed = {r["name"] for r, s in zip(memory, sequential) if r != s}
    assert changed and not any(".layers.0." in name for name in changed)  # layer 0 sees the same inputs either way
    with pytest.raises(UserError, match="calibration.sequential: .* build with --stream"):
        builder.build(tmp_path / "seq.yaml", tmp_path / "other")


def test_values_exact_in_bfloat16_do_not_reach_later_statistics(hub_checkpoint, tmp_path, monkeypatch):
    """The streamed statistics read the layer's stored experts while the layer is being quantized. mxfp4 values
    are exact in bfloat16, so the build would write them into the very tensor those statistics read: each
    expert's down projection must still see the baseline gate_up's outputs, as in the in-memory build."""
    from quantlab.stages import layerwise

    monkeypatch.setattr(layerwise, "HESSIAN_BYTES", 1)  # down_proj's Hessians computed after gate_up is written
    _, folder = hub_checkpoint
    body = (
        'calibration: {dataset: "zoo:aime-style", samples: 20, sequence_length: 32, seed: 0}\ngroups:\n'
        "  - select: {component: experts, re: gate_up}\n    format: mxfp4\n"
        "  - select: {component: experts, re: down_proj}\n    format: {name: int4, group_size: 16}\n"
        "    method: {name: gptq, min_tokens: 8}\n"
    )
    results = _built_both_ways(folder, body, tmp_path)
    memory = results["memory"].manifest.tensors
    assert any(".gate_up_proj" in r["name"] and r.get("format", "").startswith("mxfp4") for r in memory)
    assert any(r.get("method", "").startswith("gptq") and "method_fallback" not in r for r in memory)
    assert results["stream"].manifest.tensors == memory
    ours, theirs = _packed(results["stream"].path), _packed(results["memory"].path)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_model_larger_than_available_memory_is_one_line_before_loading(tmp_path, monkeypatch):
    """Measure and transformers evaluation say what they need instead of swapping or being killed."""
    from quantlab.models import loading
    from quantlab.stages.evaluate.run import evaluate
    from quantlab.stages.measure.run import measure_variant

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: r\nmodel: zoo:tiny-gpt-oss\ngroups:\n  - select: {component: experts}\n    format: mxfp4\n"
    )
    builder.build(recipe, tmp_path / "artifacts")
    need = loading.float32_bytes(tmp_path / "artifacts" / "r" / "model")
    assert need == 4 * sum(p.numel() for p in load_model(tmp_path / "artifacts" / "r" / "model")[0].parameters())
    monkeypatch.setattr(loading, "available_memory_bytes", lambda: need // 2)  # a machine this model outgrows
    with pytest.raises(UserError, match=r"measuring r against its baseline needs about .* GiB .* --backend llama.cpp"):
        measure_variant("r", artifacts=tmp_path / "artifacts", max_tokens=256)
    with pytest.raises(UserError, match="evaluating r with transformers needs about"):
        evaluate("r", "zoo_gpqa_style", limit=2, artifacts=tmp_path / "artifacts")
    assert not (tmp_path / "artifacts" / "r" / "measure").exists()
