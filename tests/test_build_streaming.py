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
from quantlab.zoo.synth import write_checkpoint

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


def test_streamed_build_is_the_in_memory_build(hub_checkpoint, tmp_path):
    family, folder = hub_checkpoint
    body = (
        "groups:\n  - select: {component: experts}\n    format: mxfp4\n"
        "  - select: {component: attention}\n    format: {name: int4, group_size: 32}\n"
        "  - select: {component: lm_head}\n    format: {name: int4, group_size: 16}\n"
    )
    results = {}
    for mode in ("memory", "stream"):
        recipe = tmp_path / f"{mode}.yaml"
        recipe.write_text(f"name: {mode}\nmodel: {folder}\n{body}")
        results[mode] = builder.build(recipe, tmp_path / "artifacts", stream=mode == "stream")
    memory, stream = results["memory"], results["stream"]
    assert stream.manifest["run"]["streamed"] is True
    assert len(list((stream.path / "model").glob("*.safetensors"))) == _small(family)["num_hidden_layers"] + 1
    assert stream.manifest["tensors"] == memory.manifest["tensors"]
    assert stream.manifest["stored_float32"] == memory.manifest["stored_float32"]
    ours, theirs = _packed(stream.path), _packed(memory.path)
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    streamed, _ = load_model(stream.path / "model")
    built, _ = load_model(memory.path / "model")
    mine = dict(streamed.named_parameters())
    for name, value in built.named_parameters():
        assert mine[name].dtype == value.dtype and torch.equal(mine[name], value), name


def test_what_does_not_stream_is_one_line(tmp_path):
    recipe = tmp_path / "preset.yaml"
    recipe.write_text("name: p\nmodel: zoo:tiny-gpt-oss\npreset: gguf-q4_k_m\nexports: [gguf]\n")
    with pytest.raises(UserError, match="preset: a llama.cpp preset is resolved over the whole model"):
        builder.build(recipe, tmp_path / "artifacts", stream=True)
    assert not (tmp_path / "artifacts").exists()
