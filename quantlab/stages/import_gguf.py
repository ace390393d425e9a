"""``quantlab import FILE.gguf --model SOURCE``: a GGUF file quantized elsewhere (llama.cpp's ``llama-quantize``, a
community upload) as a variant of ``SOURCE`` in the store, measured and evaluated like a built one.

The variant holds the file itself as its GGUF export (llama.cpp runs exactly those bytes) and, as its Hugging
Face model, the baseline with every tensor the file holds replaced by its dequantized values (ggml's own
``dequantize_row_*``, in float32: exact). The tensor map is the GGUF export's (``quantlab.export.gguf``) read
backwards, so an import of the lab's own export gives back the variant it came from. A file of another
architecture, another layer count, or other shapes than the baseline's is refused in one line.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantlab.errors import UserError
from quantlab.export.gguf import GGUF_ARCH, gguf_layout, runtime_departures
from quantlab.formats import Packed, get_format
from quantlab.models.loading import load_model, resolve_model, weights_sha256
from quantlab.models.units import architecture, weight_units
from quantlab.stages.build_records import BuildResult, library_versions, run_record
from quantlab.stages.gguf_check import compare_logits
from quantlab.stages.plan_quantization import error_summary
from quantlab.store import MANIFEST, ArtifactStore, as_store, atomic_directory, content_key, sha256_file
from quantlab.store.records import Manifest

_FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


def import_gguf(
    gguf_path: Path | str,
    model: str,
    name: str | None = None,
    artifacts: ArtifactStore | Path | str = Path("artifacts"),
    force: bool = False,
) -> BuildResult:
    """The GGUF file as a variant of ``model`` in the store (or the one already there for the same file)."""
    started = time.perf_counter()
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path}: no such GGUF file")
    name = name or gguf_path.stem
    folder = resolve_model(model)
    model_sha256, file_sha256 = weights_sha256(folder), sha256_file(gguf_path)
    versions = library_versions()
    key = content_key({"gguf_sha256": file_sha256, "model_sha256": model_sha256, "versions": versions})
    out = as_store(artifacts).variant_folder(name)
    with ArtifactStore.lock(out):
        existing = ArtifactStore.cached(out / MANIFEST, key)
        if existing is not None and not force:
            return BuildResult(out, True, Manifest.from_dict(existing, out / MANIFEST))
        return _import(gguf_path, model, folder, name, model_sha256, file_sha256, versions, key, out, started)


def _import(gguf_path, model_ref, folder, name, model_sha256, file_sha256, versions, key, out, started):
    reader = _reader(gguf_path)
    model, tokenizer = load_model(folder, dtype=torch.float32)  # the dequantized values are exact in float32
    arch = architecture(model.config)
    _check_same_model(reader, gguf_path, model.config, GGUF_ARCH[arch])
    tensors = {t.name: t for t in reader.tensors}
    parameters = dict(model.named_parameters())
    original = {n: p.detach().clone() for n, p in parameters.items()}
    types: dict[str, set[str]] = {}  # parameter or unit name -> the GGUF types its values came from
    experts = getattr(model.config, "num_local_experts", None) or getattr(model.config, "num_experts", None) or 1
    layout = gguf_layout(model.config)
    for slot in layout:
        if slot.gguf_name not in tensors:
            raise UserError(f"{gguf_path}: has no tensor {slot.gguf_name}; it is not a GGUF of {model_ref}")
        tensor = tensors[slot.gguf_name]
        values = _dequantized(tensor, gguf_path)
        target = parameters[slot.hf_name].data
        if slot.kind == "vector":
            view = target if slot.columns is None else target[..., slot.columns]
            _check_shape(gguf_path, slot.gguf_name, values.shape, view.shape)
            view.copy_(values.reshape(view.shape))
            continue
        for index, unit in enumerate(slot.units(experts)):
            types.setdefault(unit, set()).add(tensor.tensor_type.name)
            _place(target, values[index] if slot.kind == "experts" else values, slot, index, arch, gguf_path)

    rows = _rows(model, original, types)
    model.config.dtype = torch.float32
    manifest = {
        "variant": name,
        "cache_key": key,
        "recipe": {
            "name": name,
            "model": model_ref,
            "imported_gguf": {"file": str(gguf_path.resolve()), "sha256": file_sha256},
        },
        "recipe_file": str(gguf_path.resolve()),
        "model": {"source": model_ref, "folder": str(folder), "sha256": model_sha256, "architecture": arch},
        "seed": 0,
        "versions": versions,
        "plan": _plan_summary(model, gguf_path, rows, folder),
        "stored_float32": sorted({r["tensor"] for r in rows if r["format"] != "keep"}),
        "tensors": [{k: v for k, v in r.items() if k != "tensor"} for r in rows],
    }
    with atomic_directory(out, force=True, needed_bytes=2 * gguf_path.stat().st_size) as tmp:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        shutil.copyfile(gguf_path, tmp / "model.gguf")  # the store owns its files: never a link to the user's
        manifest["sizes"] = {
            "model_safetensors_bytes": sum(p.stat().st_size for p in (tmp / "model").glob("*.safetensors")),
            "planned_size_bytes": gguf_path.stat().st_size,  # what the variant's weights take: the file
        }
        manifest["exports"] = {
            "gguf": {
                "file": "model.gguf",
                "bytes": gguf_path.stat().st_size,
                "tensor_types": [
                    {"name": t.name, "type": t.tensor_type.name, "why": "as imported"} for t in reader.tensors
                ],
                "logits_vs_variant": compare_logits(model, tokenizer, tmp / "model.gguf"),
                "runtime_departures": runtime_departures(model.config),
            }
        }
        manifest["run"] = run_record(started)
        record = Manifest.from_dict(manifest, out / MANIFEST)
        (tmp / MANIFEST).write_text(record.to_json(indent=2))
    return BuildResult(out, False, record)


def _reader(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as error:  # gguf-py raises ValueError / struct errors on a damaged or foreign file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: not a readable GGUF file ({first[:120]}); check or re-download it") from None


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    return bytes(value).decode() if value.dtype == np.uint8 else value.item()


def _check_same_model(reader, path: Path, config, gguf_arch: str) -> None:
    arch = _field(reader, "general.architecture")
    if arch != gguf_arch:
        raise UserError(f"{path}: a GGUF of architecture {arch!r}; the model is {gguf_arch!r}")
    layers = _field(reader, f"{arch}.block_count")
    if layers != config.num_hidden_layers:
        raise UserError(f"{path}: {layers} layers; the model has {config.num_hidden_layers}: not a GGUF of this model")


def _check_shape(path: Path, name: str, got, expected) -> None:
    if tuple(got) != tuple(expected) and int(np.prod(got)) != int(np.prod(expected)):
        raise UserError(f"{path}: {name} has shape {tuple(got)}, the model's is {tuple(expected)}")


def _dequantized(tensor, path: Path) -> torch.Tensor:
    """The tensor's values in float32, in the model's (rows, columns) order: (out, in) or (experts, out, in)."""
    import gguf

    kind = tensor.tensor_type.name
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # GGUF lists dimensions innermost first
    if kind in _FLOAT_TYPES:
        return torch.from_numpy(np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), copy=True)).reshape(
            shape
        )
    try:
        fmt = get_format(f"gguf:{kind}")
    except (KeyError, ValueError, UserError):
        raise UserError(f"{path}: tensor {tensor.name} has type {kind}, which quantlab cannot decode") from None
    raw = torch.from_numpy(np.array(tensor.data, copy=True)).reshape(-1, tensor.data.shape[-1])  # a writable copy
    packed = Packed(fmt.describe(), (raw.shape[0], shape[-1]), {"blocks": raw}, notes={"ggml_type": kind})
    return fmt.dequantize(packed).float().reshape(shape)


def _place(target: torch.Tensor, matrix: torch.Tensor, slot, expert: int, arch: str, path: Path) -> None:
    """Writes one GGUF matrix (out part, in) back where the export took it from (the inverse of its slot)."""
    if slot.kind == "experts":
        whole = target[expert].T if arch == "gpt_oss" else target[expert]  # gpt-oss holds (experts, in, out)
    else:
        whole = target
    rows = slice(None) if slot.rows is None else slot.rows
    part = whole[rows]
    _check_shape(path, slot.gguf_name, matrix.shape, part.shape)
    if isinstance(rows, list):
        whole[rows] = matrix.reshape(part.shape).to(whole.dtype)
    else:
        part.copy_(matrix.reshape(part.shape))


def _rows(model, original: dict, types: dict[str, set[str]]) -> list[dict]:
    """A manifest row per weight matrix: the GGUF type(s) its values came from, and its error."""
    parameters = dict(model.named_parameters())
    rows = []
    for unit in weight_units(model):
        kinds = sorted(types.get(unit.name, set()))
        quantized = [k for k in kinds if k not in _FLOAT_TYPES]
        before, after = unit.read(original), unit.read(parameters)
        row: dict[str, Any] = {
            "tensor": unit.tensor,
            "name": unit.name,
            "component": unit.component,
            "layer": unit.layer,
            "expert": unit.expert,
            "shape": list(unit.shape),
        }
        if not quantized:
            rows.append(row | {"format": "keep", "why": f"GGUF {'/'.join(kinds) or 'F32'}", "bits_per_weight": 32})
            continue
        bits = max(get_format(f"gguf:{k}").bits_per_weight for k in quantized)
        rows.append(
            row
            | {
                "format": "/".join(f"gguf:{k}" for k in quantized),
                "method": "imported",
                "group": None,
                "fallback": None,
                "bits_per_weight": bits,
                "error": error_summary(before, after),
            }
        )
    return rows


def _plan_summary(model, path: Path, rows: list[dict], folder: Path) -> dict:
    import json

    config = json.loads((folder / "config.json").read_text())
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    weights = sum(p.numel() for p in model.parameters())
    quantized = sum(r["shape"][0] * r["shape"][1] for r in rows if r["format"] != "keep")
    size = path.stat().st_size
    return {
        "weights": weights,
        "quantized_weights": quantized,
        "size_bytes": size,
        "average_bits_per_weight": round(8 * size / weights, 4),
        "baseline_bits_per_weight": 16 if dtype in ("bfloat16", "float16") else 32,
    }
