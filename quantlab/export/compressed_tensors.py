"""The ``compressed-tensors`` export: integer weights in the checkpoint format llm-compressor writes and vLLM
loads (``quant_method: compressed-tensors``, ``format: pack-quantized``), written with the compressed-tensors
library's own packing and schema.

Each quantized matrix becomes a module with ``weight_packed`` (int32, 32/bits signed codes per word along the
input axis), ``weight_scale`` (float16, one per group of inputs, or per row) and ``weight_shape``; quantlab's
unsigned codes ``q`` on the grid ``scale · (q - 2^(b-1))`` are the library's signed codes ``q - 2^(b-1)`` on
``scale · c``, so the export is exact. A fused expert tensor (gpt-oss's ``experts.gate_up_proj``) is written one
module per expert, ``<tensor>.<expert>.*``, each as (out, in): the layout of llm-compressor's linearized experts.
vLLM's CPU build runs such experts only with Intel AMX (docs/serving.md), so the export has not been served
by vLLM here; the library's own decompression reads it back exactly (tests/test_export_compressed_tensors.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from quantlab.errors import UserError
from quantlab.export.base import Export
from quantlab.formats import Packed, get_format
from quantlab.models.units import weight_units

_INTEGER = re.compile(r"^int(\d+)\((.*)\)$")


def integer_layout(description: str) -> tuple[int, int | None] | None:
    """(bits, group size or None for one scale per row) of a symmetric integer format's description, None for
    any other format; an asymmetric integer format is a one-line error (no zero points written yet)."""
    found = _INTEGER.match(description)
    if not found:
        return None
    params = dict(part.strip().split("=", 1) for part in found[2].split(",") if "=" in part)
    if params.get("symmetric", "True") != "True":
        raise UserError(
            f"compressed-tensors export: {description} is asymmetric; the export writes symmetric integers only"
        )
    group = params.get("group_size", "None")
    return int(found[1]), None if group in ("None", "channel") else int(group)


def _signed_codes(packed: Packed, bits: int, group_size: int | None) -> torch.Tensor:
    fmt = get_format(f"int{bits}", group_size=group_size, symmetric=True)
    codes = fmt.codes(packed).reshape(packed.shape).to(torch.int16)  # type: ignore[attr-defined]
    return (codes - (1 << (bits - 1))).to(torch.int8)


def export_compressed_tensors(model, tokenizer, units, packed_by_unit: dict[str, Packed], folder: Path) -> dict:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    from safetensors.torch import save_file

    layouts: dict[str, tuple[int, int | None]] = {}
    for unit in units:
        packed = packed_by_unit.get(unit.name)
        layout = integer_layout(packed.format) if packed is not None else None
        if layout is not None:
            layouts[unit.name] = layout
    if not layouts:
        raise UserError(
            "compressed-tensors export: no tensor is in an integer format (int4, int8, ...); drop the export"
        )
    by_tensor: dict[str, list] = {}
    for unit in units:
        by_tensor.setdefault(unit.tensor, []).append(unit)
    state: dict[str, torch.Tensor] = {}
    targets: dict[tuple[int, int | None], list[str]] = {}
    for name, parameter in model.named_parameters():
        slices = by_tensor.get(name, [])
        chosen = [unit for unit in slices if unit.name in layouts]
        if not chosen:
            state[name] = parameter.detach().contiguous()
            continue
        if len(chosen) != len(slices):
            raise UserError(
                f"compressed-tensors export: {name} has some experts in an integer format and some not; "
                "give every expert of a tensor the same format"
            )
        module = name.removesuffix(".weight")
        for unit in chosen:
            bits, group_size = layouts[unit.name]
            packed = packed_by_unit[unit.name]
            prefix = module if unit.expert is None or parameter.dim() != 3 else f"{module}.{unit.expert}"
            state[f"{prefix}.weight_packed"] = pack_to_int32(_signed_codes(packed, bits, group_size), bits)
            state[f"{prefix}.weight_scale"] = packed.data["scale"].reshape(unit.shape[0], -1).to(torch.float16)
            state[f"{prefix}.weight_shape"] = torch.tensor(unit.shape, dtype=torch.int64)
            targets.setdefault((bits, group_size), []).append(prefix)
    groups = {
        f"group_{i}": QuantizationScheme(
            targets=names,
            weights=QuantizationArgs(
                num_bits=bits,
                type="int",
                symmetric=True,
                strategy="group" if group_size else "channel",
                group_size=group_size,
            ),
        )
        for i, ((bits, group_size), names) in enumerate(sorted(targets.items(), key=lambda item: str(item[0])))
    }
    config = QuantizationConfig(
        config_groups=groups, format="pack-quantized", quantization_status="compressed", ignore=["lm_head"]
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config_dict = model.config.to_dict()
    config_dict["quantization_config"] = json.loads(config.model_dump_json(exclude_none=True))
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(folder)
    return {
        "folder": folder.name,
        "bytes": (folder / "model.safetensors").stat().st_size,
        "modules": sum(len(names) for names in targets.values()),
    }


class CompressedTensorsExport(Export, name="compressed-tensors"):
    path = "compressed-tensors"
    streams = False  # the library writes one whole file

    def write(self, model, tokenizer, packed_by_unit, folder):
        return export_compressed_tensors(model, tokenizer, weight_units(model), packed_by_unit, folder / self.path)
