"""``quantlab build``: a recipe applied to a model, written as a variant artifact.

    artifacts/<recipe name>/
      model/              the variant as a Hugging Face model: dequantized weights (what quantlab measures)
      packed.safetensors  every quantized matrix in its format's real stored layout, described in its metadata
      manifest.json       resolved recipe, model source and hash, per-matrix format / method / bits / error,
                          sizes, seeds, library versions, the command; and, under "run", timings

Everything but ``manifest.json["run"]`` is a function of the recipe, the model and the library versions: a
rebuild writes the same bytes. The cache key hashes exactly those inputs; a build whose key matches the
manifest on disk is a cache hit. The artifact is written to a temporary sibling folder and renamed into place
at the end, so a build killed part-way leaves nothing that looks complete.

Dequantized values are stored exactly: a parameter keeps the model's dtype when every dequantized value is
representable in it (MXFP4 in bfloat16 is), otherwise it is stored in float32 and the config's dtype says so.
"""

from __future__ import annotations

import json
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from quantlab.calibration import calibration_revision
from quantlab.errors import UserError
from quantlab.formats import Packed, get_format
from quantlab.methods import Quantized, get_method
from quantlab.models.loading import computing_in_float32, load_model, resolve_model, weights_sha256
from quantlab.models.units import architecture, weight_units
from quantlab.plan import Plan, PlanEntry, resolve_plan
from quantlab.recipe import KEEP, Recipe, find_recipe, load_recipe
from quantlab.store import MANIFEST, PACKED, ArtifactStore, as_store, atomic_directory, content_key
from quantlab.store.records import Manifest

DTYPE_BITS = {torch.float32: 32, torch.bfloat16: 16, torch.float16: 16}


@dataclass
class BuildResult:
    path: Path
    cache_hit: bool
    manifest: dict


def library_versions() -> dict[str, str]:
    """Versions of everything whose numerics end up in the variant's bytes."""
    versions = {"python": platform.python_version()}
    for package in ("quantlab", "torch", "transformers", "safetensors", "gguf", "llama_cpp_python"):
        try:
            versions[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def cache_key(recipe: Recipe, model_sha256: str, versions: dict, stream: bool = False) -> str:
    weights = {k: v for k, v in recipe.resolved().items() if k != "serve"}  # serving settings do not change the bytes
    # a recipe calibrated on a built-in text gets a new cache key when the text changes (its revision)
    revision = None if recipe.calibration is None else calibration_revision(recipe.calibration.dataset)
    if revision is not None:
        weights["calibration_text_revision"] = revision
    if any(get_method(g.method.name).needs_calibration for g in recipe.groups):
        # statistics from a float32 forward pass (before: in the model's dtype, bf16 for the embedded model)
        weights["calibration_compute_dtype"] = "float32"
    inputs = {"recipe": weights, "model_sha256": model_sha256, "versions": versions}
    if stream:  # the same values, laid out in shards (model and packed tensors) and without exports
        inputs["layout"] = "streamed"
    return content_key(inputs)


def plan_for(recipe: Recipe, model, tokenizer=None) -> Plan:
    units = weight_units(model)
    keep_bits = DTYPE_BITS.get(_stored_dtype(model), 32)
    unit_tensors = {u.tensor for u in units}
    others = sum(p.numel() for n, p in model.named_parameters() if n not in unit_tensors)
    preset = None
    if recipe.preset:
        from quantlab.presets import preset_formats

        preset = preset_formats(model, tokenizer, recipe.preset)
    return resolve_plan(recipe, units, keep_bits, others, preset)


def _stored_dtype(model) -> torch.dtype:
    dtype = getattr(model.config, "dtype", None) or next(model.parameters()).dtype
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def dry_run(recipe_path: Path) -> Plan:
    recipe = load_recipe(recipe_path)
    model, tokenizer = load_model(resolve_model(recipe.model))
    architecture(model.config)
    return plan_for(recipe, model, tokenizer)


def build(
    recipe_path: Path | str,
    artifacts: ArtifactStore | Path | str = Path("artifacts"),
    force: bool = False,
    progress=None,
    stream: bool = False,
) -> BuildResult:
    """Builds (or finds in the cache) the variant a recipe describes; returns where it is. ``recipe_path``: a
    recipe file or the name of a shipped recipe. ``stream``: one layer at a time, never the whole model in memory
    (``quantlab.stages.build_streaming``)."""
    started = time.perf_counter()
    recipe_path = find_recipe(recipe_path)
    recipe = load_recipe(recipe_path)
    folder = resolve_model(recipe.model)
    model_sha256 = weights_sha256(folder)
    versions = library_versions()
    key = cache_key(recipe, model_sha256, versions, stream)
    out = as_store(artifacts).variant_folder(recipe.name)
    if stream:
        from quantlab.stages.build_streaming import build_streaming, check_streamable

        check_streamable(recipe)  # before waiting on a lock: a recipe that cannot stream is one line at once
    elif recipe.calibration is not None and recipe.calibration.sequential:
        raise recipe.error(
            "calibration.sequential",
            "statistics through the quantized layers are computed layer by layer: build with --stream",
        )
    with ArtifactStore.lock(out):
        existing = ArtifactStore.cached(out / MANIFEST, key)
        if existing is not None and not force:
            return BuildResult(out, True, existing)
        if stream:
            return build_streaming(recipe, recipe_path, folder, model_sha256, versions, key, out, started, progress)
        return _build(recipe, recipe_path, folder, model_sha256, versions, key, out, started, progress)


def _build(
    recipe: Recipe,
    recipe_path: Path,
    folder: Path,
    model_sha256: str,
    versions: dict,
    key: str,
    out: Path,
    started: float,
    progress,
) -> BuildResult:
    torch.manual_seed(recipe.seed)
    model, tokenizer = load_model(folder)
    arch = architecture(model.config)
    plan = plan_for(recipe, model, tokenizer)
    loaded = time.perf_counter()

    statistics = _input_statistics(recipe, model, tokenizer, plan)
    parameters = dict(model.named_parameters())
    todo = [e for e in plan.entries if e.quantized]
    done = quantize_entries(todo, parameters, statistics, folder, progress, len(todo))
    quantized = time.perf_counter()

    upcast = sorted(set(done.upcast))
    if upcast:
        model.config.dtype = torch.float32  # so that loading with dtype="auto" keeps the values exact
    rows = done.rows + [_kept_row(e) for e in plan.entries if not e.quantized]
    manifest = manifest_head(recipe, recipe_path, key, folder, model_sha256, arch, versions, plan, upcast, rows)
    with atomic_directory(out, force=True, needed_bytes=_needed_bytes(model, plan)) as tmp:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        _save_packed(done.stored, done.described, tmp / PACKED)
        manifest["sizes"] = _sizes(tmp, plan)
        manifest["exports"] = _exports(recipe, model, tokenizer, done.packed_by_unit, tmp)
        manifest["run"] = run_record(started, loaded, quantized)
        (tmp / MANIFEST).write_text(Manifest.from_dict(manifest, out / MANIFEST).to_json(indent=2))
    return BuildResult(out, False, manifest)


def manifest_head(
    recipe: Recipe,
    recipe_path: Path,
    key: str,
    folder: Path,
    model_sha256: str,
    arch: str,
    versions: dict,
    plan: Plan,
    upcast: list[str],
    rows: list[dict],
) -> dict:
    """A built variant's manifest up to what its folder adds (sizes, exports, run): what was built, from what."""
    return {
        "variant": recipe.name,
        "cache_key": key,
        "recipe": recipe.resolved(),
        "recipe_file": str(recipe_path),
        "model": {"source": recipe.model, "folder": str(folder), "sha256": model_sha256, "architecture": arch},
        "seed": recipe.seed,
        "versions": versions,
        "plan": plan.summary(),
        "stored_float32": upcast,
        "tensors": rows,
    }


def run_record(started: float, loaded: float | None = None, quantized: float | None = None, **extra) -> dict:
    """The manifest's ``run``: the command, the phases' seconds (from ``time.perf_counter`` marks), the threads."""
    seconds = {} if loaded is None else {"load": round(loaded - started, 3)}
    if quantized is not None and loaded is not None:
        seconds["quantize"] = round(quantized - loaded, 3)
    seconds["total"] = round(time.perf_counter() - started, 3)
    command = "quantlab " + shlex.join(sys.argv[1:]) if sys.argv and "quantlab" in sys.argv[0] else None
    return {"command": command, **extra, "seconds": seconds, "torch_threads": torch.get_num_threads()}


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
        if isinstance(quantized.stored.get(""), Packed):
            result.packed_by_unit[entry.unit.name] = quantized.stored[""]
    return result


def _exports(recipe: Recipe, model, tokenizer, packed_by_unit: dict, folder: Path) -> dict:
    """The exports the recipe asks for, each with what it holds and how it compares with the variant."""
    exports = {}
    if "gguf" in recipe.exports:
        from quantlab.export.gguf import compare_logits, export_gguf, runtime_departures

        tensor_types = export_gguf(model, tokenizer, packed_by_unit, folder / "model.gguf")
        exports["gguf"] = {
            "file": "model.gguf",
            "bytes": (folder / "model.gguf").stat().st_size,
            "tensor_types": tensor_types,
            "logits_vs_variant": compare_logits(model, tokenizer, folder / "model.gguf"),
            "runtime_departures": runtime_departures(model.config),
        }
    if "native" in recipe.exports:
        from quantlab.export.native import export_native

        exports["native"] = export_native(model, tokenizer, packed_by_unit, folder / "native")
    if "compressed-tensors" in recipe.exports:
        from quantlab.export.compressed_tensors import export_compressed_tensors
        from quantlab.models.units import weight_units

        exports["compressed-tensors"] = export_compressed_tensors(
            model, tokenizer, weight_units(model), packed_by_unit, folder / "compressed-tensors"
        )
    return exports


def _needed_bytes(model, plan: Plan) -> int:
    """A lower bound of the disk the artifact takes: the model as held in memory and the packed matrices (the
    exports come on top), so that a disk too small for even that is refused before anything is written."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) + int(plan.summary()["size_bytes"])


def _input_statistics(recipe: Recipe, model, tokenizer, plan: Plan) -> dict:
    """Calibration statistics of the matrices a data-driven method quantizes (empty when none does)."""
    units = [e.unit for e in plan.entries if e.quantized and get_method(e.method_spec.name).needs_calibration]
    if not units:
        return {}
    from quantlab.calibration import calibration_tokens
    from quantlab.methods.activations import collect_input_statistics

    tokens = calibration_tokens(recipe.calibration, tokenizer)
    with computing_in_float32(model):  # as the lab runs its baselines; bf16 weights convert exactly and back
        return collect_input_statistics(model, [u for u in units if u.component != "embeddings"], tokens)


def _apply(entry: PlanEntry, matrix: torch.Tensor, statistics) -> Quantized:
    spec, method_spec = entry.format_spec, entry.method_spec
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


def _save_packed(tensors: dict, described: dict, path: Path) -> None:
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


def _kept_row(entry: PlanEntry) -> dict:
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


def _sizes(folder: Path, plan: Plan) -> dict:
    model_bytes = sum(p.stat().st_size for p in (folder / "model").glob("*.safetensors"))
    packed_bytes = (folder / PACKED).stat().st_size
    return {
        "model_safetensors_bytes": model_bytes,
        "packed_safetensors_bytes": packed_bytes,
        "planned_size_bytes": plan.summary()["size_bytes"],
        "average_bits_per_weight": plan.summary()["average_bits_per_weight"],
    }
