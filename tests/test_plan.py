"""Plan resolution rules on the embedded model, worked out by hand from its structure (4 layers, 8 experts,
gate_up 512x256 and down 256x256 per expert, q/o 256x256, k/v 128x256, router 8x256, 2 norms per layer)."""

import pytest

from quantlab.methods import lowrank
from quantlab.models.loading import load_model, resolve_model
from quantlab.recipe import load_recipe
from quantlab.stages.build import plan_for

RECIPE = """
name: rules
model: zoo:tiny-gpt-oss
groups:
  - name: all experts
    select: {component: experts}
    format: {name: int4, group_size: 32}
  - name: two experts of two layers
    select: {component: experts, layers: "0-1", experts: [0, 3]}
    format: bf16
  - name: "everything in layer 2 (the router is not named: it stays)"
    select: {layers: 2}
    format: fp8_e4m3
  - name: the router of layer 3, named
    select: {component: router, layers: 3}
    format: mxfp8
ignore:
  - {re: 'layers\\.1\\.mlp\\.experts\\.down_proj\\[7\\]'}
"""


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "rules.yaml"
    path.write_text(RECIPE)
    model, _ = load_model(resolve_model("zoo:tiny-gpt-oss"))
    return plan_for(load_recipe(path), model)


def entry(plan, name):
    return next(e for e in plan.entries if e.unit.name == name)


def test_later_groups_override_earlier_ones(plan):
    assert entry(plan, "model.layers.0.mlp.experts.gate_up_proj[3]").format_name == "bf16"
    assert entry(plan, "model.layers.1.mlp.experts.down_proj[0]").format_name == "bf16"
    assert entry(plan, "model.layers.1.mlp.experts.down_proj[1]").format_name.startswith("int4(group_size=32")
    assert entry(plan, "model.layers.2.mlp.experts.down_proj[5]").format_name.startswith("fp8_e4m3")
    assert entry(plan, "model.layers.2.self_attn.q_proj.weight").format_name.startswith("fp8_e4m3")


def test_router_and_norms_stay_unless_named(plan):
    assert entry(plan, "model.layers.2.mlp.router.weight").format_name == "keep"
    assert entry(plan, "model.layers.2.input_layernorm.weight").format_name == "keep"
    assert entry(plan, "model.layers.3.mlp.router.weight").format_name.startswith("mxfp8")


def test_ignore_wins_and_unselected_stay(plan):
    ignored = entry(plan, "model.layers.1.mlp.experts.down_proj[7]")
    assert ignored.format_name == "keep" and ignored.why == "ignore[0]"
    assert entry(plan, "model.embed_tokens.weight").format_name == "keep"
    assert entry(plan, "model.layers.0.self_attn.q_proj.weight").why == "no group selects it"


def test_totals_by_hand(plan):
    experts = 4 * 8 * (512 * 256 + 256 * 256)
    bf16_experts = 2 * 2 * (512 * 256 + 256 * 256)
    layer2_experts = 8 * (512 * 256 + 256 * 256)
    ignored = 256 * 256
    int4 = experts - bf16_experts - layer2_experts - ignored
    layer2_attention = 2 * 256 * 256 + 2 * 128 * 256
    router3 = 8 * 256
    assert plan.quantized_weights == int4 + bf16_experts + layer2_experts + layer2_attention + router3
    int4_bits, fp8_bits, mxfp8_bits = 4 + 16 / 32, 8.0, 8.25
    planned_bits = (
        int4 * int4_bits + bf16_experts * 16 + (layer2_experts + layer2_attention) * fp8_bits + router3 * mxfp8_bits
    )
    kept_bits = (plan.total_weights - plan.quantized_weights) * 16  # the model stores bfloat16
    assert plan.total_bytes == pytest.approx((planned_bits + kept_bits) / 8)


def test_lowrank_error_is_the_discarded_singular_values():
    """Eckart-Young: the best rank-r approximation leaves exactly the energy of the discarded singular values."""
    import torch

    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(0))
    result = lowrank(w, None, rank_ratio=0.25)
    assert result.notes["rank"] == 16 and result.stored["a"].shape == (96, 16) and result.stored["b"].shape == (16, 64)
    s = torch.linalg.svdvals(w.double())
    expected = float((s[16:] ** 2).sum())
    assert float(((w.double() - result.dequantized.double()) ** 2).sum()) == pytest.approx(expected, rel=1e-5)
