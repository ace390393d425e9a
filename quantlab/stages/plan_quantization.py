"""A plan's entries quantized: each matrix through its method and format, its packed tensors in the format's
stored layout, and its manifest row. The in-memory build and the streamed build (a layer at a time) share it, so
both write the same values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from quantlab.errors import UserError
from quantlab.formats import Packed, get_format
from quantlab.methods import Quantized, get_method
from quantlab.models.units import weight_units
from quantlab.plan import Plan, PlanEntry, resolve_plan
from quantlab.presets import preset_formats
from quantlab.recipe import KEEP, Recipe

DTYPE_BITS = {torch.float32: 32, torch.bfloat16: 16, torch.float16: 16}


def plan_for(recipe: Recipe, model, tokenizer=None) -> Plan:
    units = weight_units(model)
    keep_bits = DTYPE_BITS.get(_stored_dtype(model), 32)
    unit_tensors = {u.tensor for u in units}
    others = sum(p.numel() for n, p in model.named_parameters() if n not in unit_tensors)
    preset = None
    if recipe.preset:
        preset = preset_formats(model, tokenizer, recipe.preset)
    return resolve_plan(recipe, units, keep_bits, others, preset)


def _stored_dtype(model) -> torch.dtype:
    dtype = getattr(model.config, "dtype", None) or next(model.parameters()).dtype
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


@dataclass
class Quantization:
    """What quantizing some of a plan's entries gives: packed tensors and their descriptions, manifest rows, the
    parameters made float32, and each matrix's Packed (for exports)."""

    stored: dict[str, torch.Tensor]
    packed_by_unit: dict[str, Packed]
    described: dict[str, dict]
    rows: list[dict]
    upcast: list[str]


def quantize_entries(
    entries: list[PlanEntry],
    parameters: dict[str, torch.Tensor],
    statistics: dict,
    folder: Path,
    progress=None,
    total: int = 0,
    done_before: int = 0,
    out_of_place: bool = False,
) -> Quantization:
    """Quantizes each entry's matrix in ``parameters`` (their values replaced by the dequantized ones, a parameter
    made float32 where a value is not exact in its dtype), in order; ``progress(i, total, name)`` before each.

    ``out_of_place``: each parameter gets new storage before its first write, so that whoever else holds the
    tensor read (the streaming build's layerwise calibration, which still reads the layer's original values)
    keeps them. Free where the values go to float32 anyway (the write is then a copy): GPTQ's usual case."""
    result = Quantization({}, {}, {}, [], [])
    own_storage: set[str] = set()
    for i, entry in enumerate(entries):
        if progress:
            progress(done_before + i, total, entry.unit.name)
        original = entry.unit.read(parameters)
        if not torch.isfinite(original).all():  # a damaged checkpoint: say where, before anything is written
            raise UserError(
                f"{folder}: {entry.unit.name} holds NaN or Inf values; the checkpoint is damaged "
                "(re-download or re-export it)"
            )
        quantized = _apply_on_device(entry, original, statistics.get(entry.unit.name))
        tensors, description = _packed_tensors(entry, quantized, entry.format_spec)
        result.stored.update(tensors)
        result.described[entry.unit.name] = description
        # the row before the write: a float32 parameter's ``original`` is a view of the values the write replaces
        result.rows.append(_row(entry, original, quantized, description))
        parameter = parameters[entry.unit.tensor]
        if parameter.dtype != torch.float32 and not _exact_in(quantized.dequantized, parameter.dtype):
            parameter.data = parameter.data.float()  # stored exactly, in float32 (see the module docstring)
            result.upcast.append(entry.unit.tensor)
            own_storage.add(entry.unit.tensor)
        elif out_of_place and entry.unit.tensor not in own_storage:
            parameter.data = parameter.data.clone()
            own_storage.add(entry.unit.tensor)
        entry.unit.write({entry.unit.tensor: parameter.data}, quantized.dequantized)
        packed = quantized.stored.get("")
        if isinstance(packed, Packed):
            result.packed_by_unit[entry.unit.name] = packed
    return result


def _apply(entry: PlanEntry, matrix: torch.Tensor, statistics) -> Quantized:
    spec, method_spec = entry.applied
    method = get_method(method_spec.name)
    fmt = None if spec.name == KEEP else get_format(spec.name, **spec.params)
    return method.apply(matrix, fmt, method.params(method_spec.params), statistics, entry.unit.component)


def compute_device() -> str:
    """Where matrices are quantized: ``QUANTLAB_DEVICE`` (e.g. ``cuda``), else the CPU. Every format stores the same
    bytes on CUDA as on the CPU (tests/test_formats_cuda.py), so the variant is the same; only the time differs."""
    import os

    return os.environ.get("QUANTLAB_DEVICE", "cpu")


def _apply_on_device(entry: PlanEntry, matrix: torch.Tensor, statistics) -> Quantized:
    """``_apply`` on ``compute_device()`` for a matrix quantized without statistics (with them: on the CPU), the
    result brought back to the CPU."""
    device = compute_device()
    if device == "cpu" or statistics is not None:  # GPTQ's Hessians and its matrix stay on one device: the CPU
        return _apply(entry, matrix, statistics)
    result = _apply(entry, matrix.to(device), None)

    def cpu(value):
        if isinstance(value, Packed):
            return Packed(
                value.format, value.shape, {k: v.cpu() for k, v in value.data.items()}, value.fallback, value.notes
            )
        return value.cpu()

    return Quantized({k: cpu(v) for k, v in result.stored.items()}, result.dequantized.cpu(), result.notes)


def _exact_in(values: torch.Tensor, dtype: torch.dtype) -> bool:
    return torch.equal(values.to(dtype).float(), values)


def _packed_tensors(entry: PlanEntry, result: Quantized, spec) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors ``packed.safetensors`` holds for one matrix, and the metadata that describes them: enough
    to decode them with ``get_format(name, **params)`` (a GGUF fallback's ggml type in ``ggml_type``)."""
    tensors, parts = {}, {}
    for part, value in result.stored.items():
        prefix = entry.unit.name + (f".{part}" if part else "")
        if isinstance(value, Packed):
            for field, tensor in value.data.items():
                tensors[f"{prefix}.{field}"] = tensor.contiguous()
            ggml_type = value.notes.get("ggml_type")
            name = f"gguf:{ggml_type}" if ggml_type else spec.name
            parts[part or "matrix"] = {
                "format": value.format,
                "name": name,
                "params": {} if ggml_type else spec.params,
                "shape": list(value.shape),
                "fields": sorted(value.data),
                "fallback": value.fallback,
            }
        else:  # a low-rank factor kept as it is
            tensors[prefix] = value.contiguous()
            parts[part] = {"format": KEEP, "shape": list(value.shape), "fields": []}
    description = {
        "tensor": entry.unit.tensor,
        "expert": entry.unit.expert,
        "transposed": entry.unit.transposed,
        "method": entry.method,
        "parts": parts,
    } | ({"rank": result.notes["rank"]} if "rank" in result.notes else {})
    return tensors, description


def packed_matrix(description: dict, read) -> Packed | None:
    """The packed matrix a ``_packed_tensors`` description holds (``read(field)``: its tensors), or None for a
    matrix kept as low-rank factors: what ``quantize_entries`` puts in ``packed_by_unit``, read back."""
    part = description["parts"].get("matrix")  # a matrix kept as factors has its parts under their own names
    if part is None:
        return None
    notes = {"ggml_type": part["name"][5:]} if part["name"].startswith("gguf:") else {}
    data = {field: read(field) for field in part["fields"]}
    return Packed(part["format"], tuple(part["shape"]), data, part["fallback"], notes)


def save_packed(tensors: dict, described: dict, path: Path) -> None:
    from safetensors.torch import save_file

    metadata_json = json.dumps(described, sort_keys=True)
    save_file(tensors, str(path), metadata={"quantlab": metadata_json})


def _row(entry: PlanEntry, original: torch.Tensor, result: Quantized, description: dict) -> dict:
    stored_bytes = 0
    for value in result.stored.values():
        stored_bytes += value.stored_bytes if isinstance(value, Packed) else value.numel() * value.element_size()
    return (
        _unit_fields(entry)
        | {
            "format": entry.format_name,
            "method": entry.method,
            "group": entry.group,
            "fallback": entry.fallback,
            "bits_per_weight": round(8 * stored_bytes / original.numel(), 4),
            "stored_bytes": stored_bytes,
            "error": error_summary(original, result.dequantized),
        }
        | {key: result.notes[key] for key in ("rank", "calibration_tokens", "method_fallback") if key in result.notes}
    )


def _unit_fields(entry: PlanEntry) -> dict:
    """Which matrix a manifest row is about (the first fields of every row)."""
    unit = entry.unit
    return {
        "name": unit.name,
        "component": unit.component,
        "layer": unit.layer,
        "expert": unit.expert,
        "shape": list(unit.shape),
    }


def kept_row(entry: PlanEntry) -> dict:
    return _unit_fields(entry) | {
        "format": KEEP,
        "why": entry.why,
        "bits_per_weight": entry.bits_per_weight,
    }


def error_summary(original: torch.Tensor, approx: torch.Tensor) -> dict:
    """Relative Frobenius error, SQNR (dB) and largest absolute error of one matrix."""
    w, d = original.double(), (approx.double() - original.double())
    signal, noise = float((w**2).sum()), float((d**2).sum())
    return {
        "relative_error": round(math.sqrt(noise / signal), 6) if signal else (0.0 if not noise else math.inf),
        "sqnr_db": round(10 * math.log10(signal / noise), 3) if noise and signal else None,
        "max_abs_error": float(d.abs().max()),
    }
