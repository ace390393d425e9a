"""What a build records of itself: its result, the library versions in its bytes, its manifest's head and run."""

from __future__ import annotations

import platform
import shlex
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from quantlab.plan import Plan
from quantlab.recipe import Recipe
from quantlab.store.records import Manifest


@dataclass
class BuildResult:
    """What a build returns: the variant's folder, whether the store held it already, and its manifest."""

    path: Path
    cache_hit: bool
    manifest: Manifest


def library_versions() -> dict[str, str]:
    """Versions of everything whose numerics end up in the variant's bytes."""
    versions = {"python": platform.python_version()}
    for package in ("quantlab", "torch", "transformers", "safetensors", "gguf", "llama_cpp_python"):
        try:
            versions[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


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
