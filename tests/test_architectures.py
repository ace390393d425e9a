"""The recipe engine on a tiny random model of each supported architecture, built in the test: the expert
matrices come out (out, in) whatever the layout, a recipe builds, and the variant loads with transformers."""

import shutil

import pytest
import torch

from quantlab import build as builder
from quantlab.models.loading import load_model
from quantlab.models.units import weight_units
from quantlab.zoo import SHIPPED_CHECKPOINT

HIDDEN, INTERMEDIATE, LAYERS, EXPERTS = 64, 96, 2, 4


def tiny_config(arch: str):
    import transformers

    common = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=53, max_position_embeddings=64, tie_word_embeddings=False)
    if arch == "gpt_oss":
        return transformers.GptOssConfig(**common, head_dim=16, intermediate_size=INTERMEDIATE, num_local_experts=EXPERTS,
                                         num_experts_per_tok=2, sliding_window=16, layer_types=["sliding_attention", "full_attention"])
    if arch == "qwen3_moe":
        return transformers.Qwen3MoeConfig(**common, head_dim=16, intermediate_size=128, moe_intermediate_size=INTERMEDIATE,
                                           num_experts=EXPERTS, num_experts_per_tok=2, decoder_sparse_step=1)
    if arch == "mixtral":
        return transformers.MixtralConfig(**common, intermediate_size=INTERMEDIATE, num_local_experts=EXPERTS, num_experts_per_tok=2)
    if arch == "olmoe":
        return transformers.OlmoeConfig(**common, intermediate_size=INTERMEDIATE, num_experts=EXPERTS, num_experts_per_tok=2)
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
    rows = {row["name"]: row for row in result.manifest["tensors"]}
    for unit in weight_units(variant):
        row = rows[unit.name]
        changed = not torch.equal(unit.read(params), unit.read(original))
        assert changed == (row["format"] != "keep"), unit.name
        if row["format"] != "keep":
            assert row["error"]["relative_error"] < 0.2, unit.name
    tokens = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        assert torch.isfinite(variant(tokens).logits).all()
