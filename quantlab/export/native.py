"""The ``native`` export: gpt-oss with MXFP4 experts in the layout of OpenAI's released checkpoints.

Each fused expert tensor is stored as ``<name>_blocks`` (experts, out, in/32, 16): two E2M1 codes per byte,
the even element in the low nibble, and ``<name>_scales`` (experts, out, in/32): the E8M0 exponent bytes;
``config.json`` carries ``quantization_config: {quant_method: mxfp4}``, so transformers' gpt-oss MXFP4 path
loads it (on a CPU it dequantizes on load). These are exactly quantlab's packed ``mxfp4`` codes and scales,
rearranged; every other tensor is the variant's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from quantlab.errors import UserError
from quantlab.export.base import Export
from quantlab.formats import Packed

# As in the released gpt-oss configs: everything but the experts stays unquantized.
NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]


def export_native(model, tokenizer, packed_by_unit: dict[str, Packed], folder: Path) -> dict:
    from safetensors.torch import save_file

    config = model.config
    _check_gpt_oss(config)
    state: dict[str, torch.Tensor] = {}
    for name, parameter in model.named_parameters():
        state |= _native_tensors(config, name, parameter.detach(), packed_by_unit)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_config_and_tokenizer(config, tokenizer, folder)
    return {"folder": folder.name, "bytes": (folder / "model.safetensors").stat().st_size}


def export_native_streamed(
    config, tokenizer, groups: list[list[str]], parameter: Callable[[str], torch.Tensor], packed_by_unit, folder: Path
) -> dict:
    """The same tensors as ``export_native``, one shard per group of parameter names (the streamed build's
    layers) with ``model.safetensors.index.json``, as the released checkpoints are sharded: one group in memory
    at a time. ``parameter(name)`` reads a value, ``packed_by_unit.get`` a packed matrix."""
    from safetensors.torch import save_file

    _check_gpt_oss(config)
    folder.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total = 0
    for index, names in enumerate(groups):
        state: dict[str, torch.Tensor] = {}
        for name in names:
            state |= _native_tensors(config, name, parameter(name), packed_by_unit)
        shard = f"model-{index + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(state, str(folder / shard), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(state, shard)
        total += (folder / shard).stat().st_size
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n")
    _write_config_and_tokenizer(config, tokenizer, folder)
    return {"folder": folder.name, "bytes": total}


def _check_gpt_oss(config) -> None:
    if config.model_type != "gpt_oss":
        raise UserError(f"native export: only gpt-oss has a native MXFP4 layout (this model is {config.model_type})")


def _native_tensors(config, name: str, value: torch.Tensor, packed_by_unit) -> dict[str, torch.Tensor]:
    """What the released layout stores for the parameter ``name``: its ``_blocks`` and ``_scales`` for a fused
    expert tensor (every expert in mxfp4), else the value itself."""
    if not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
        return {name: value.contiguous()}
    packed = [packed_by_unit.get(f"{name}[{e}]") for e in range(config.num_local_experts)]
    if any(p is None or not p.format.startswith("mxfp4(") for p in packed):
        raise UserError(
            f"native export: {name} has experts not in mxfp4; the released gpt-oss layout holds every "
            "expert matrix in MXFP4 (use a recipe whose experts group is format: mxfp4, or drop 'native')"
        )
    out, inner = packed[0].shape
    return {
        name + "_blocks": torch.stack([p.data["codes"].reshape(out, inner // 32, 16) for p in packed]),
        name + "_scales": torch.stack([p.data["scale_e8m0"].reshape(out, inner // 32) for p in packed]),
    }


def _write_config_and_tokenizer(config, tokenizer, folder: Path) -> None:
    config_dict = config.to_dict()
    config_dict["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": NOT_CONVERTED}
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(folder)


class NativeExport(Export, name="native"):
    path = "native"

    def write(self, model, tokenizer, packed_by_unit, folder):
        return export_native(model, tokenizer, packed_by_unit, folder / self.path)

    def write_streamed(self, config, tokenizer, parameter, packed_by_unit, groups, folder):
        return export_native_streamed(config, tokenizer, groups, parameter, packed_by_unit, folder / self.path)
