"""The compressed-tensors export, read back by the compressed-tensors library itself: its config parses as the
library's QuantizationConfig, its unpacked codes times the scales are the variant's weights exactly, and its own
decompression (which multiplies in float16, the scales' dtype) is those weights rounded to float16."""

from __future__ import annotations

import json

import pytest
import torch

from quantlab.errors import UserError

pytest.importorskip("compressed_tensors")

RECIPE = """\
name: int4-ct
model: zoo:tiny-gpt-oss
exports: [compressed-tensors]
groups:
  - name: experts and attention
    select: {component: [experts, attention]}
    format: {name: int4, group_size: 128, symmetric: true}
  - name: lm head per row
    select: {component: lm_head}
    format: {name: int8, symmetric: true}
"""


def test_the_library_decompresses_every_module_to_the_variants_weights(tmp_path):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    from quantlab.models.loading import load_model
    from quantlab.models.units import weight_units
    from quantlab.stages.build import build

    recipe = tmp_path / "int4-ct.yaml"
    recipe.write_text(RECIPE)
    built = build(recipe, tmp_path / "store")
    folder = built.path / "compressed-tensors"
    config = QuantizationConfig.model_validate(json.loads((folder / "config.json").read_text())["quantization_config"])
    assert config.format == "pack-quantized" and config.quant_method == "compressed-tensors"
    schemes = {target: scheme for scheme in config.config_groups.values() for target in scheme.targets}
    tensors = load_file(folder / "model.safetensors")
    model, _ = load_model(built.path / "model", dtype=torch.float32)
    parameters = dict(model.named_parameters())
    checked = 0
    for unit in weight_units(model):
        if unit.component not in ("experts", "attention", "lm_head"):
            continue
        module = unit.tensor.removesuffix(".weight")
        prefix = module if unit.expert is None or parameters[unit.tensor].dim() != 3 else f"{module}.{unit.expert}"
        scheme = schemes[prefix]
        local = {k.removeprefix(prefix + "."): v for k, v in tensors.items() if k.startswith(prefix + ".weight_")}
        exact = unit.read(parameters)  # the variant's weights: code x scale, exact in float32
        # the library's codes are the variant's weights divided by their scales, exactly
        bits, group = scheme.weights.num_bits, scheme.weights.group_size or exact.shape[1]
        codes = unpack_from_int32(local["weight_packed"], bits, local["weight_shape"])
        scales = local["weight_scale"].float().repeat_interleave(group, dim=1)
        assert torch.equal(codes.float() * scales, exact), unit.name
        assert int(codes.min()) >= -(1 << (bits - 1)) and int(codes.max()) < (1 << (bits - 1))
        # and its own decompression (in the scale's dtype, float16) is that value rounded to float16
        weight = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
        assert torch.equal(weight, exact.to(weight.dtype)), unit.name
        checked += 1
    assert checked == 4 * (4 + 2 * 8) + 1  # attention q/k/v/o and both expert tensors of 8 experts per layer, lm_head
    assert {s.weights.strategy for s in config.config_groups.values()} == {"group", "channel"}


def test_an_export_with_nothing_to_pack_or_asymmetric_integers_is_one_line(tmp_path):
    from quantlab.stages.build import build

    for body, message in (
        ("groups:\n  - select: {component: experts}\n    format: mxfp4\n", "no tensor is in an integer format"),
        (
            "groups:\n  - select: {component: experts}\n    format: {name: int4, group_size: 32, symmetric: false}\n",
            "asymmetric",
        ),
    ):
        recipe = tmp_path / "bad.yaml"
        recipe.write_text(f"name: bad\nmodel: zoo:tiny-gpt-oss\nexports: [compressed-tensors]\n{body}")
        with pytest.raises(UserError, match=message):
            build(recipe, tmp_path / "store", force=True)
        assert not (tmp_path / "store" / "bad").exists()  # nothing half-written
