"""``quantlab bench ray``: a three-factor attribution run sequentially and as Ray tasks on a local cluster of 1
and 2 workers, each from an empty store: the wall times, their ratios to the sequential run's, and whether each
stored attribution equals the sequential one (it must, byte for byte, but for the store's path)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from quantlab.stages.attribute import attribute
from quantlab.store.records import Attribution

RECIPE = """\
# three factors: each group is one choice of the recipe
name: three-factors
model: zoo:tiny-gpt-oss
groups:
  - name: experts
    select: {component: experts}
    format: mxfp4
  - name: attention
    select: {component: attention}
    format: {name: int4, group_size: 32, symmetric: true}
  - name: lm_head
    select: {component: lm_head}
    format: {name: int4, group_size: 32, symmetric: true}
"""


def _stored(result: Attribution, store: Path, recipe: Path) -> str:
    return result.stored_at.read_text().replace(str(store), "STORE").replace(str(recipe), "RECIPE")


def compare_ray(limit: int = 100, tokens: int = 2048, workers: tuple[int, ...] = (1, 2), progress=None) -> dict:
    """Wall times of the sequential attribution and of each Ray run, each from an empty store."""
    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="quantlab-bench-ray-") as folder:
        recipe = Path(folder) / "three-factors.yaml"
        recipe.write_text(RECIPE)
        reference = None
        for count in (None, *workers):
            store = Path(folder) / f"store-{count or 'sequential'}"
            if progress:
                progress("sequential" if count is None else f"Ray, {count} worker(s)")
            started = time.perf_counter()
            result = attribute(
                recipe,
                ["zoo_aime_style"],
                limit=limit,
                tokens=tokens,
                artifacts=store,
                ray=None if count is None else "local",
                workers=count,
            )
            wall = time.perf_counter() - started
            stored = _stored(result, store, recipe)
            reference = reference or (stored, wall)
            rows.append(
                {
                    "run": "sequential" if count is None else f"--ray --workers {count}",
                    "wall_s": round(wall, 1),
                    "vs_sequential": round(wall / reference[1], 2),
                    "same_stored_attribution": stored == reference[0],
                    "cells": len(result.cells),
                }
            )
    return {"limit": limit, "tokens": tokens, "torch_threads": torch.get_num_threads(), "runs": rows}
