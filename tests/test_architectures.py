"""The recipe engine on a tiny random model of each supported architecture, built in the test: the expert
matrices come out (out, in) whatever the layout, a recipe builds, and the variant loads with transformers."""

import json
import shutil

import pytest
import torch

from quantlab.models.loading import load_model
from quantlab.models.units import weight_units
from quantlab.stages import build as builder
from quantlab.zoo import SHIPPED_CHECKPOINT

HIDDEN, INTERMEDIATE, LAYERS, EXPERTS = 64, 96, 2, 4


def tiny_config(arch: str):
    import transformers

    common = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        # the shipped tokenizer's vocabulary (its files are copied beside each model below)
        vocab_size=json.loads((SHIPPED_CHECKPOINT / "config.json").read_text())["vocab_size"],
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    if arch == "gpt_oss":
        return transformers.GptOssConfig(
            **common,
            head_dim=16,
            intermediate_size=INTERMEDIATE,
            num_local_experts=EXPERTS,
            num_experts_per_tok=2,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
        )
    if arch == "qwen3_moe":
        return transformers.Qwen3MoeConfig(
            **common,
            head_dim=16,
            intermediate_size=128,
            moe_intermediate_size=INTERMEDIATE,
            norm_topk_prob=True,
            num_experts=EXPERTS,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
        )
    if arch == "mixtral":
        return transformers.MixtralConfig(
            **common, intermediate_size=INTERMEDIATE, num_local_experts=EXPERTS, num_experts_per_tok=2
        )
    if arch == "olmoe":  # as many key/value heads as query heads, as in the released OLMoE (llama.cpp assumes it)
        return transformers.OlmoeConfig(
            **(common | {"num_key_value_heads": 4}),
            intermediate_size=INTERMEDIATE,
            num_experts=EXPERTS,
            num_experts_per_tok=2,
        )
    return transformers.LlamaConfig(**common, intermediate_size=INTERMEDIATE)


@pytest.fixture(scope="module", params=["gpt_oss", "qwen3_moe", "mixtral", "olmoe", "llama"])
def tiny_model_folder(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config(request.param)
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SHIPPED_CHECKPOINT / name, folder / name)
    return request.param, folder


def test_expert_matrices_are_out_by_in(tiny_model_folder):
    arch, folder = tiny_model_folder
    model, _ = load_model(folder)
    units = weight_units(model)
    experts = [u for u in units if u.component == "experts"]
    if arch == "llama":  # a dense MLP: three matrices per layer, all expert 0
        assert len(experts) == 3 * LAYERS and {u.expert for u in experts} == {0}
        assert {u.shape for u in experts} == {(INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)}
        return
    gate_up = [u for u in experts if "gate_up" in u.tensor]
    down = [u for u in experts if "down" in u.tensor]
    assert len(gate_up) == len(down) == LAYERS * EXPERTS
    assert {u.shape for u in gate_up} == {(2 * INTERMEDIATE, HIDDEN)}
    assert {u.shape for u in down} == {(HIDDEN, INTERMEDIATE)}
    assert all(u.transposed == (arch == "gpt_oss") for u in experts)
    # The unit reads the slice a forward pass multiplies by: x @ W.T for (out, in) W.
    params = dict(model.named_parameters())
    unit = down[1]
    stored = params[unit.tensor].detach()[unit.expert]
    assert torch.equal(unit.read(params), (stored.T if unit.transposed else stored).float())
    assert [u for u in units if u.component == "router"]


def test_a_recipe_builds_and_the_variant_loads(tiny_model_folder, tmp_path):
    arch, folder = tiny_model_folder
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"name: tiny-{arch}\nmodel: {folder}\ngroups:\n"
        "  - select: {component: experts}\n    format: {name: int4, group_size: 32}\n"
        "  - select: {component: attention}\n    format: mxfp4\n"
    )
    result = builder.build(recipe, tmp_path / "artifacts")
    variant, _ = load_model(result.path / "model", dtype=torch.float32)
    baseline, _ = load_model(folder, dtype=torch.float32)
    params, original = dict(variant.named_parameters()), dict(baseline.named_parameters())
    rows = {row["name"]: row for row in result.manifest.tensors}
    for unit in weight_units(variant):
        row = rows[unit.name]
        changed = not torch.equal(unit.read(params), unit.read(original))
        assert changed == (row["format"] != "keep"), unit.name
        if row["format"] != "keep":
            assert 0 < row["error"]["relative_error"] < 0.2, unit.name  # the matrix changed: its error is not 0
    tokens = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        assert torch.isfinite(variant(tokens).logits).all()


@pytest.fixture(scope="module")
def needs_llama_cpp():
    pytest.importorskip("llama_cpp", reason="the gguf export's check needs quantlab[gguf]")


def test_gguf_export_loads_in_llama_cpp_with_matching_logits(tiny_model_folder, tmp_path, needs_llama_cpp):
    """F32 export (experts in bf16, written as their values): llama.cpp's logits within 1e-3 of transformers'."""
    arch, folder = tiny_model_folder
    recipe = tmp_path / "gguf.yaml"
    recipe.write_text(
        f"name: gguf-{arch}\nmodel: {folder}\nexports: [gguf]\ngroups:\n"
        "  - select: {component: experts}\n    format: bf16\n"
    )
    result = builder.build(recipe, tmp_path / "artifacts")
    comparison = result.manifest.exports["gguf"]["logits_vs_variant"]
    assert comparison["relative_l2"] <= 1e-3, comparison


def test_quantized_gguf_export_carries_the_plan_types(tiny_model_folder, tmp_path, needs_llama_cpp):
    import gguf

    arch, folder = tiny_model_folder
    recipe = tmp_path / "q.yaml"
    recipe.write_text(
        f"name: q-{arch}\nmodel: {folder}\nexports: [gguf]\ngroups:\n"
        "  - select: {component: experts}\n    format: gguf:Q8_0\n"
        "  - select: {component: attention}\n    format: mxfp4\n"
    )
    result = builder.build(recipe, tmp_path / "artifacts")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(result.path / "model.gguf").tensors}
    expert_tensors = [
        n
        for n in types
        if n.startswith("blk.0.ffn_") and n.endswith(("exps.weight", "gate.weight", "up.weight", "down.weight"))
    ]
    assert expert_tensors and all(types[n] == "Q8_0" for n in expert_tensors), types
    assert types["blk.1.attn_q.weight"] == types["blk.1.attn_output.weight"] == "MXFP4"
    assert types["token_embd.weight"] == "F32"
    comparison = result.manifest.exports["gguf"]["logits_vs_variant"]
    assert comparison["relative_l2"] < 0.05, comparison  # the runtime's share, reported
