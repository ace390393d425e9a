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

import time
from pathlib import Path

import torch

from quantlab.calibration import calibration_revision, calibration_tokens
from quantlab.export import get_export, in_build_order
from quantlab.methods import get_method
from quantlab.methods.activations import collect_input_statistics
from quantlab.models.loading import computing_in_float32, load_model, resolve_model, weights_sha256
from quantlab.models.units import architecture
from quantlab.plan import Plan
from quantlab.recipe import Recipe, find_recipe, load_recipe
from quantlab.stages.build_records import BuildResult, library_versions, manifest_head, run_record
from quantlab.stages.build_streaming import build_streaming, check_streamable
from quantlab.stages.gguf_check import compare_logits
from quantlab.stages.plan_quantization import (
    DTYPE_BITS,
    error_summary,
    kept_row,
    packed_matrix,
    plan_for,
    quantize_entries,
    save_packed,
)
from quantlab.store import MANIFEST, PACKED, ArtifactStore, as_store, atomic_directory, content_key
from quantlab.store.records import Manifest

# re-exported: callers build variants through this module
__all__ = [
    "DTYPE_BITS",
    "BuildResult",
    "build",
    "cache_key",
    "dry_run",
    "error_summary",
    "library_versions",
    "packed_matrix",
    "plan_for",
]


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
        check_streamable(recipe)  # before waiting on a lock: a recipe that cannot stream is one line at once
    elif recipe.calibration is not None and recipe.calibration.sequential:
        raise recipe.error(
            "calibration.sequential",
            "statistics through the quantized layers are computed layer by layer: build with --stream",
        )
    with ArtifactStore.lock(out):
        existing = ArtifactStore.cached(out / MANIFEST, key)
        if existing is not None and not force:
            return BuildResult(out, True, Manifest.from_dict(existing, out / MANIFEST))
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
    rows = done.rows + [kept_row(e) for e in plan.entries if not e.quantized]
    manifest = manifest_head(recipe, recipe_path, key, folder, model_sha256, arch, versions, plan, upcast, rows)
    with atomic_directory(out, force=True, needed_bytes=_needed_bytes(model, plan)) as tmp:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        save_packed(done.stored, done.described, tmp / PACKED)
        manifest["sizes"] = _sizes(tmp, plan)
        manifest["exports"] = _exports(recipe, model, tokenizer, done.packed_by_unit, tmp)
        manifest["run"] = run_record(started, loaded, quantized)
        record = Manifest.from_dict(manifest, out / MANIFEST)
        (tmp / MANIFEST).write_text(record.to_json(indent=2))
    return BuildResult(out, False, record)


def _exports(recipe: Recipe, model, tokenizer, packed_by_unit: dict, folder: Path) -> dict:
    """The exports the recipe asks for, each with what it holds and (a file llama.cpp runs) how its logits compare
    with the variant's."""
    exports = {}
    for name in in_build_order(recipe.exports):
        export = get_export(name)
        record = export.write(model, tokenizer, packed_by_unit, folder)
        if export.runs_in_llama_cpp:
            record["logits_vs_variant"] = compare_logits(model, tokenizer, folder / export.path)
        exports[name] = record
    return exports


def _needed_bytes(model, plan: Plan) -> int:
    """A lower bound of the disk the artifact takes: the model as held in memory and the packed matrices (the
    exports come on top), so that a disk too small for even that is refused before anything is written."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) + int(plan.summary()["size_bytes"])


def _input_statistics(recipe: Recipe, model, tokenizer, plan: Plan) -> dict:
    """Calibration statistics of the matrices a data-driven method quantizes (empty when none does)."""
    units = [e.unit for e in plan.entries if e.quantized and get_method(e.applied[1].name).needs_calibration]
    if not units:
        return {}

    tokens = calibration_tokens(recipe.calibration, tokenizer)
    with computing_in_float32(model):  # as the lab runs its baselines; bf16 weights convert exactly and back
        return collect_input_statistics(model, [u for u in units if u.component != "embeddings"], tokens)


def _sizes(folder: Path, plan: Plan) -> dict:
    model_bytes = sum(p.stat().st_size for p in (folder / "model").glob("*.safetensors"))
    packed_bytes = (folder / PACKED).stat().st_size
    return {
        "model_safetensors_bytes": model_bytes,
        "packed_safetensors_bytes": packed_bytes,
        "planned_size_bytes": plan.summary()["size_bytes"],
        "average_bits_per_weight": plan.summary()["average_bits_per_weight"],
    }
