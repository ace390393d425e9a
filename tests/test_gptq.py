"""GPTQ: equal to RTN where it must be, close to GPTQModel on a dense layer, and MoE-aware in a build."""

import json
import os

import pytest
import torch

from quantlab.formats import get_format
from quantlab.methods.gptq import gptq_quantize
from quantlab.stages import build as builder


def test_gptq_with_uncorrelated_inputs_is_rtn():
    """With a diagonal Hessian there is no other column to push a rounding error into: GPTQ = round to nearest."""
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    fmt = get_format("int4", group_size=32, symmetric=False)
    packed = gptq_quantize(w, 500.0 * torch.eye(128, dtype=torch.float64), 1000, fmt)
    rtn = fmt.quantize(w)
    for key in rtn.data:
        assert torch.equal(packed.data[key], rtn.data[key]), key


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_matches_gptqmodel_on_a_dense_layer(symmetric):
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    gptq_module = pytest.importorskip("gptqmodel.quantization.gptq", reason="GPTQModel not installed")
    from gptqmodel.quantization.config import QuantizeConfig

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 256, generator=generator) * 0.05
    inputs = torch.randn(512, 256, generator=generator) * torch.linspace(0.2, 3, 256)  # correlated scales
    layer = torch.nn.Linear(256, 64, bias=False)
    layer.weight.data = weight.clone()
    reference = gptq_module.GPTQ(
        layer, QuantizeConfig(bits=4, group_size=32, sym=symmetric, desc_act=False, damp_percent=0.01)
    )
    reference.quantizer.configure(perchannel=True)
    reference.add_batch(inputs, layer(inputs))
    scale, zero, *_ = reference.hf_quantize(
        blocksize=128, percdamp=0.01, damp_auto_increment=0.0015, group_size=32, actorder=False, act_group_aware=False
    )
    theirs = layer.weight.data.float()
    their_codes = torch.round(theirs / scale.float().repeat_interleave(32, 1) + zero.float().repeat_interleave(32, 1))

    fmt = get_format("int4", group_size=32, symmetric=symmetric)
    packed = gptq_quantize(weight, inputs.double().T @ inputs.double(), inputs.shape[0], fmt, damp=0.01)
    ours, our_codes = fmt.dequantize(packed), fmt.codes(packed).reshape(64, 256).float()

    def output_error(w):
        return float(((w - weight) @ inputs.T).pow(2).mean())

    # The same algorithm: almost every code agrees (ours rounds with the stored float16 scale, GPTQModel with
    # the float32 one, and a differing code changes the error fed forward), and the output error is the same.
    assert (our_codes == their_codes).float().mean() > 0.97
    assert output_error(ours) == pytest.approx(output_error(theirs), rel=0.02)
    assert output_error(ours) < 0.9 * output_error(fmt.roundtrip(weight))


def test_experts_see_the_tokens_the_router_sends_them(tmp_path):
    from quantlab.calibration import calibration_tokens
    from quantlab.models.loading import load_model, resolve_model
    from quantlab.recipe import load_recipe

    recipe = tmp_path / "gptq.yaml"

    def write(min_tokens: int) -> None:
        recipe.write_text(
            "name: gptq\nmodel: zoo:tiny-gpt-oss\ncalibration: {samples: 16, sequence_length: 32}\ngroups:\n"
            "  - select: {component: experts, layers: 0}\n    format: {name: int4, group_size: 32}\n"
            f"    method: {{name: gptq, min_tokens: {min_tokens}}}\n"
        )

    # Independently: route the same calibration tokens through layer 0's router and count (in float32, the
    # dtype calibration computes in; the checkpoint's bf16 weights convert exactly).
    write(60)
    model, tokenizer = load_model(resolve_model("zoo:tiny-gpt-oss"), dtype=torch.float32)
    tokens = calibration_tokens(load_recipe(recipe).calibration, tokenizer)
    seen = {}
    layer = model.model.layers[0]
    hook = layer.mlp.router.register_forward_hook(lambda m, a, out: seen.setdefault("indices", []).append(out[2]))
    with torch.no_grad():
        model(tokens)
    hook.remove()
    indices = torch.cat(seen["indices"])
    counts = sorted(int((indices == expert).any(dim=-1).sum()) for expert in range(8))
    threshold = counts[len(counts) // 2]  # some experts below it (fall back), some at or above it (gptq)
    assert counts[0] < threshold
    write(threshold)
    manifest = builder.build(recipe, tmp_path / "artifacts").manifest
    rows = {r["name"]: r for r in manifest.tensors}
    for expert in range(8):
        routed = int((indices == expert).any(dim=-1).sum())
        for tensor in ("gate_up_proj", "down_proj"):
            row = rows[f"model.layers.0.mlp.experts.{tensor}[{expert}]"]
            assert row["calibration_tokens"] == routed
            assert ("method_fallback" in row) == (routed < threshold)
    assert any("method_fallback" in r for r in rows.values()) and any(
        "method_fallback" not in r for r in rows.values() if r["format"] != "keep"
    )
    assert (
        json.loads((tmp_path / "artifacts" / "gptq" / "manifest.json").read_text())["recipe"]["calibration"]["samples"]
        == 16
    )


def test_imatrix_is_ggml_with_the_routed_mean_squared_inputs(tmp_path):
    pytest.importorskip("llama_cpp", reason="imatrix quantization is ggml's (quantlab[gguf])")
    from safetensors import safe_open

    from quantlab.calibration import calibration_tokens
    from quantlab.formats import ggml
    from quantlab.formats.gguf import GGUF_TYPES
    from quantlab.models.loading import load_model, resolve_model
    from quantlab.recipe import load_recipe

    recipe = tmp_path / "imatrix.yaml"
    recipe.write_text(
        "name: imatrix\nmodel: zoo:tiny-gpt-oss\ncalibration: {samples: 16, sequence_length: 32}\ngroups:\n"
        "  - select: {component: experts, layers: 0}\n    format: gguf:Q4_K\n    method: imatrix\n"
    )
    result = builder.build(recipe, tmp_path / "artifacts")
    model, tokenizer = load_model(resolve_model("zoo:tiny-gpt-oss"), dtype=torch.float32)  # calibration's dtype
    tokens = calibration_tokens(load_recipe(recipe).calibration, tokenizer)
    captured = {}
    layer = model.model.layers[0]
    hooks = [
        layer.post_attention_layernorm.register_forward_hook(
            lambda m, a, out: captured.setdefault("x", []).append(out)
        ),
        layer.mlp.router.register_forward_hook(lambda m, a, out: captured.setdefault("i", []).append(out[2])),
    ]
    with torch.no_grad():
        model(tokens)
    for hook in hooks:
        hook.remove()
    x = torch.cat([t.reshape(-1, t.shape[-1]) for t in captured["x"]]).double()
    indices = torch.cat(captured["i"])
    expert = 3
    routed = x[(indices == expert).any(dim=-1)]
    importance = (routed**2).mean(dim=0).float()
    weight = model.model.layers[0].mlp.experts.gate_up_proj.detach()[expert].T.float().contiguous()
    expected = ggml.quantize_rows(weight, GGUF_TYPES["Q4_K"][0], importance)
    with safe_open(result.path / "packed.safetensors", "pt") as f:
        stored = f.get_tensor(f"model.layers.0.mlp.experts.gate_up_proj[{expert}].blocks")
    assert torch.equal(stored, expected)
    assert not torch.equal(stored, ggml.quantize_rows(weight, GGUF_TYPES["Q4_K"][0]))  # the importance mattered
