"""The native export: transformers' own gpt-oss MXFP4 path loads it, to exactly the variant's values."""

import pytest
import torch

from quantlab.models.loading import load_model
from quantlab.stages import build as builder

REPO_RECIPES = __import__("pathlib").Path(__file__).resolve().parent.parent / "recipes"


def test_native_export_loads_through_transformers_mxfp4(tmp_path):
    pytest.importorskip("accelerate", reason="transformers' MXFP4 loader needs accelerate")
    from transformers import AutoModelForCausalLM

    recipe = tmp_path / "native.yaml"
    recipe.write_text(
        "name: native\nmodel: zoo:tiny-gpt-oss\nexports: [native]\ngroups:\n"
        "  - select: {component: experts}\n    format: mxfp4\n"
    )
    result = builder.build(recipe, tmp_path / "artifacts")
    native = AutoModelForCausalLM.from_pretrained(result.path / "native", dtype=torch.bfloat16, local_files_only=True)
    import json

    assert (
        json.loads((result.path / "native" / "config.json").read_text())["quantization_config"]["quant_method"]
        == "mxfp4"
    )
    from safetensors import safe_open

    with safe_open(result.path / "native" / "model.safetensors", "pt") as f:  # the released layout
        assert f.get_slice("model.layers.0.mlp.experts.gate_up_proj_blocks").get_shape() == [8, 512, 8, 16]
        assert f.get_slice("model.layers.0.mlp.experts.down_proj_scales").get_shape() == [8, 256, 8]
        assert "model.layers.0.mlp.experts.down_proj" not in f.keys()
    variant, _ = load_model(result.path / "model", dtype=torch.bfloat16)
    ours, theirs = dict(variant.named_parameters()), dict(native.named_parameters())
    assert set(ours) == set(theirs)
    for name in ours:  # transformers decoded our blocks and scales to exactly the variant's values
        assert torch.equal(ours[name].float(), theirs[name].float()), name
    tokens = torch.tensor([[4, 9, 17, 5, 30, 2]])
    with torch.no_grad():
        assert torch.equal(variant(tokens).logits, native(tokens).logits)


def test_native_export_refuses_experts_not_in_mxfp4(tmp_path):
    from quantlab.errors import UserError

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "name: bad\nmodel: zoo:tiny-gpt-oss\nexports: [native]\ngroups:\n"
        "  - select: {component: experts}\n    format: mxfp4\n  - select: {experts: [2]}\n    format: bf16\n"
    )
    with pytest.raises(UserError, match="experts not in mxfp4"):
        builder.build(recipe, tmp_path / "artifacts")
    assert not (tmp_path / "artifacts" / "bad").exists()
