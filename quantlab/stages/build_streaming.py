"""``quantlab build --stream``: the same variant as ``quantlab build``, built one layer at a time.

The model is never loaded whole. Its structure comes from its config (a model on the ``meta`` device: names and
shapes, no memory), so the plan, the units and every manifest row are the in-memory build's. Then, for each
layer in turn (the embeddings, norm and output head as a last group), the layer's parameters are read from the
source shards (``quantlab.models.checkpoint``: memory-mapped, converted from the hub layout as transformers
converts it), quantized by the same code as the in-memory build (``plan_quantization.quantize_entries``), and written out
as one shard of the variant (and one shard of its packed tensors) before the next layer is read. Peak memory is
about one layer's parameters, their float32 copies and one matrix's temporaries, whatever the model's size
(``quantlab bench build-memory --stream``). Blocks of 1 MiB and more come straight from the system meanwhile
(``_large_blocks_returned``), so that what a layer frees is returned rather than kept by the allocator.

Data-driven methods (GPTQ, imatrix) get their statistics layer by layer (``quantlab.stages.layerwise``): the
calibration tokens' hidden states are carried from layer to layer, each layer's Hessians are computed, used and
freed before the next layer is read; ``calibration.sequential: true`` feeds each layer the quantized layers'
outputs instead of the baseline's.

The exports are written after the layers, from the variant's shards: the GGUF one tensor at a time (the
in-memory build's file, byte for byte), the native checkpoint one layer at a time. What the in-memory build does
and this one does not (yet): llama.cpp presets (they ask llama.cpp's quantizer to choose over the whole model's
F32 GGUF) and the compressed-tensors export (one whole file); either is a one-line error naming the recipe field.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from quantlab.export import Export, get_export, in_build_order
from quantlab.methods import get_method
from quantlab.models.checkpoint import Checkpoint
from quantlab.models.loading import load_config_and_tokenizer, meta_model
from quantlab.models.units import architecture
from quantlab.recipe import Recipe
from quantlab.stages.build_records import BuildResult, manifest_head, run_record
from quantlab.stages.layerwise import LayerwiseCalibration
from quantlab.stages.plan_quantization import kept_row, packed_matrix, plan_for, quantize_entries, save_packed
from quantlab.store import MANIFEST, atomic_directory
from quantlab.store.records import Manifest

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
PACKED_INDEX = "packed.safetensors.index.json"


def layer_groups(names: list[str]) -> list[tuple[str, list[str]]]:
    """Parameter names grouped by decoder layer, in order, then each parameter outside the layers alone (a
    released vocabulary's embedding or output head can outweigh a layer: gpt-oss's are 1.2 GB each in bf16)."""
    groups: dict[int, list[str]] = {}
    rest = []
    for name in names:
        match = _LAYER.match(name)
        if match:
            groups.setdefault(int(match[1]), []).append(name)
        else:
            rest.append(name)
    return [(f"layer {i}", groups[i]) for i in sorted(groups)] + [(name, [name]) for name in rest]


@contextmanager
def _large_blocks_returned():
    """Blocks of 1 MiB and more allocated straight from the system (mmap) while it runs, so that each is returned
    the moment it is freed. glibc's default threshold grows to 32 MiB as large tensors come and go, and the
    GPTQ and hook temporaries below it (a 5760-row block of columns is 3 MiB) then fragment the heap: measured on
    3 gpt-oss-20b-shaped layers of 8 experts, GPTQ peaked at 3.24 GiB against 2.51 GiB with the threshold fixed
    (``docs/scale.md``). The threshold goes back to glibc's largest dynamic value."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc: its own allocator's policy stands
        yield
        return
    m_mmap_threshold = -3
    mallopt(m_mmap_threshold, 2**20)
    try:
        yield
    finally:
        mallopt(m_mmap_threshold, 32 * 2**20)


def check_streamable(recipe: Recipe) -> None:
    if recipe.preset:
        raise recipe.error("preset", "a llama.cpp preset is resolved over the whole model; build it without --stream")
    for name in recipe.exports:
        if not get_export(name).streams:
            streamed = ", ".join(n for n in Export.names() if get_export(n).streams)
            raise recipe.error(
                "exports",
                f"the {name} export writes one whole file ({streamed} stream); build without --stream, or drop it",
            )


@_large_blocks_returned()
def build_streaming(
    recipe: Recipe,
    recipe_path: Path,
    folder: Path,
    model_sha256: str,
    versions: dict,
    key: str,
    out: Path,
    started: float,
    progress=None,
) -> BuildResult:
    check_streamable(recipe)
    torch.manual_seed(recipe.seed)
    checkpoint = Checkpoint(folder)
    model = meta_model(folder)

    arch = architecture(model.config)
    plan = plan_for(recipe, model)
    dtype = _dtype(model)
    entries_by_tensor: dict[str, list] = {}
    for entry in plan.entries:
        if entry.quantized:
            entries_by_tensor.setdefault(entry.unit.tensor, []).append(entry)
    groups = layer_groups([name for name, _ in model.named_parameters()])
    total = sum(len(v) for v in entries_by_tensor.values())
    calibration = None
    if any(e.method_spec and _needs_calibration(e.method_spec.name) for v in entries_by_tensor.values() for e in v):
        calibration = LayerwiseCalibration(recipe, model, checkpoint, plan, folder)
    loaded = time.perf_counter()

    rows: list[dict] = []
    upcast: list[str] = []
    weight_map: dict[str, str] = {}
    packed_map: dict[str, str] = {}
    count = len(groups)
    with atomic_directory(out, force=True, needed_bytes=checkpoint.bytes_on_disk()) as tmp:
        (tmp / "model").mkdir()
        done_before = 0
        for index, (label, names) in enumerate(groups):
            parameters = checkpoint.read(names, dtype)
            entries = [e for name in names for e in entries_by_tensor.get(name, [])]
            statistics = calibration.statistics(index, label, parameters, entries) if calibration else {}
            done = quantize_entries(
                entries,
                parameters,
                statistics,
                folder,
                progress,
                total,
                done_before,
                out_of_place=calibration is not None and calibration.reads_originals,
            )
            if calibration:
                calibration.advance(index, label, parameters)
            done_before += len(entries)
            rows += done.rows
            upcast += done.upcast
            shard = f"model-{index + 1:05d}-of-{count:05d}.safetensors"
            _save_shard({n: t.contiguous() for n, t in parameters.items()}, tmp / "model" / shard)
            weight_map |= dict.fromkeys(parameters, shard)
            if done.stored:
                packed = f"packed-{index + 1:05d}-of-{count:05d}.safetensors"
                save_packed(done.stored, done.described, tmp / packed)
                packed_map |= dict.fromkeys(done.stored, packed)
            del parameters, done, statistics  # this layer's memory, before the next layer is read
            _return_freed_memory()
        quantized = time.perf_counter()
        _write_index(tmp / "model" / "model.safetensors.index.json", weight_map, tmp / "model")
        _write_index(tmp / PACKED_INDEX, packed_map, tmp)
        _write_config(folder, tmp / "model")
        load_config_and_tokenizer(folder)[1].save_pretrained(tmp / "model")  # as the in-memory build saves it
        order = {e.unit.name: i for i, e in enumerate(plan.entries)}
        kept = [kept_row(e) for e in plan.entries if not e.quantized]
        rows = sorted(rows, key=lambda r: order[r["name"]]) + kept
        manifest = manifest_head(
            recipe, recipe_path, key, folder, model_sha256, arch, versions, plan, sorted(set(upcast)), rows
        )
        manifest["sizes"] = {
            "model_safetensors_bytes": sum(p.stat().st_size for p in (tmp / "model").glob("*.safetensors")),
            "packed_safetensors_bytes": sum(p.stat().st_size for p in tmp.glob("packed-*.safetensors")),
            "planned_size_bytes": plan.summary()["size_bytes"],
            "average_bits_per_weight": plan.summary()["average_bits_per_weight"],
        }
        manifest["exports"] = _exports(recipe, model.config, folder, tmp, packed_map, [n for _, n in groups])
        manifest["run"] = run_record(started, loaded, quantized, streamed=True)
        record = Manifest.from_dict(manifest, out / MANIFEST)
        (tmp / MANIFEST).write_text(record.to_json(indent=2))
    return BuildResult(out, False, record)


def _exports(
    recipe: Recipe, config, source: Path, tmp: Path, packed_map: dict[str, str], groups: list[list[str]]
) -> dict:
    """The exports, written from the variant's shards: the GGUF one tensor at a time (the in-memory build's file,
    byte for byte; its logits are not compared here, which needs the whole variant in memory), the native
    checkpoint one layer at a time (sharded, the in-memory build's tensors)."""
    exports: dict = {}
    if not recipe.exports:
        return exports
    tokenizer = load_config_and_tokenizer(source)[1]
    variant = Checkpoint(tmp / "model")
    packed = _PackedShards(tmp, set(packed_map.values()))

    def parameter(name: str) -> torch.Tensor:
        return variant.read([name])[name]

    for name in in_build_order(recipe.exports):
        exports[name] = get_export(name).write_streamed(config, tokenizer, parameter, packed, groups, tmp)
    return exports


class _PackedShards:
    """The streamed variant's packed matrices by unit name, read from their shards when asked (``get`` and ``in``,
    as the in-memory build's ``packed_by_unit`` dict answers them)."""

    def __init__(self, folder: Path, files: set[str]):
        from safetensors import safe_open

        self.folder = folder
        self.units: dict[str, tuple[str, dict]] = {}
        for file in sorted(files):
            with safe_open(folder / file, "pt") as f:
                described = json.loads((f.metadata() or {})["quantlab"])
            self.units |= {unit: (file, description) for unit, description in described.items()}

    def get(self, name: str):
        from safetensors import safe_open

        if name not in self:
            return None
        file, description = self.units[name]
        with safe_open(self.folder / file, "pt") as f:
            return packed_matrix(description, lambda field: f.get_tensor(f"{name}.{field}"))

    def __contains__(self, name: str) -> bool:
        return name in self.units and "matrix" in self.units[name][1]["parts"]


def _return_freed_memory() -> None:
    """Hands the freed layer's memory back to the system (glibc keeps freed heap pages for reuse, and a layer's
    worth of fragments per layer adds up over a deep model: measured, 0.7 GB per gpt-oss layer of 8 experts)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _needs_calibration(method: str) -> bool:
    return get_method(method).needs_calibration


def _dtype(model) -> torch.dtype:
    dtype = getattr(model.config, "dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def _write_index(path: Path, weight_map: dict[str, str], folder: Path) -> None:
    total = sum((folder / name).stat().st_size for name in set(weight_map.values()))
    path.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


def _write_config(source: Path, target: Path) -> None:
    """The source's config, less the release's quantization (the variant holds plain values). Its dtype stays the
    source's, as the in-memory build's saved config says: parameters stored in float32 are listed in the
    manifest's ``stored_float32``, and the lab loads variants in float32."""
    config = json.loads((source / "config.json").read_text())
    config.pop("quantization_config", None)
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if (source / "generation_config.json").is_file():
        shutil.copy(source / "generation_config.json", target / "generation_config.json")
