"""``quantlab sweep``: recipes, or a grid of settings of one recipe, each built, measured and evaluated.

A setting is a dotted path into the recipe as YAML (``groups.0.format.group_size``, ``groups.1.method.rank_ratio``,
``calibration.samples``) and the values it takes (``--set groups.0.format.group_size=32,64,128``). Several
``--set`` make a grid (every combination). Each point is written down as a recipe of its own
(``<store>/sweeps/<name>/<recipe>.<i>.yaml``, its settings in a comment), built into the store like any variant,
measured against its baseline and evaluated on the tasks; the sweep's record lists every point with its bits per
weight, mean KLD and scores with their intervals.

With ``--ray`` every point runs as a Ray task first (``quantlab.stages.parallel``); the sweep then reads every
result from the store, so its record is the sequential run's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from quantlab.errors import UserError
from quantlab.recipe import load_recipe
from quantlab.stages.build import build
from quantlab.stages.evaluate.run import evaluate
from quantlab.stages.measure.run import measure_variant
from quantlab.stages.parallel import run_on_ray
from quantlab.store import StoreLocation, as_store, atomic_write_text, content_key
from quantlab.store.records import Sweep


def parse_setting(text: str) -> tuple[str, list[Any]]:
    """(dotted path, values) from ``path=v1,v2,...`` (values read as YAML scalars: 32 is a number)."""
    path, sep, values = text.partition("=")
    if not sep or not path.strip() or not values.strip():
        raise UserError(f"--set {text!r}: give PATH=V1,V2,... e.g. --set groups.0.format.group_size=32,64")
    return path.strip(), [yaml.safe_load(v.strip()) for v in values.split(",")]


def _apply(data: dict, path: str, value: Any, source: str) -> None:
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        key: Any = int(part) if isinstance(node, list) and part.isdigit() else part
        if isinstance(node, list):
            if not isinstance(key, int) or not 0 <= key < len(node):
                raise UserError(f"--set {path}: {'.'.join(parts[:i]) or 'the recipe'} has no item {part} in {source}")
        elif not isinstance(node, dict):
            raise UserError(f"--set {path}: {'.'.join(parts[:i])} is not a section of {source}")
        if last:
            node[key] = value
            return
        child = node[key] if isinstance(node, list) else node.get(key)
        if isinstance(child, str) and parts[i + 1] != "name":  # a format or method by name alone: give it params
            child = {"name": child}
        if child is None:
            child = {}
        node[key] = child
        node = child


def sweep_points(recipes: list[Path], settings: list[tuple[str, list[Any]]], folder: Path) -> list[tuple[Path, dict]]:
    """Every point: (its recipe file, written under ``folder``, validated; the settings it has)."""
    points: list[tuple[Path, dict]] = []
    for recipe_path in recipes:
        base = load_recipe(recipe_path)
        if not settings:
            points.append((Path(recipe_path), {}))
            continue
        combos = list(itertools.product(*[values for _, values in settings]))
        for index, combo in enumerate(combos):
            data = yaml.safe_load(base.as_yaml())
            chosen = {path: value for (path, _), value in zip(settings, combo)}
            for setting, value in chosen.items():
                _apply(data, setting, value, str(recipe_path))
            data["name"] = f"{base.name}.{index}"
            path = folder / f"{data['name']}.yaml"
            comment = ", ".join(f"{k}={v}" for k, v in chosen.items())
            atomic_write_text(path, f"# sweep of {base.name}: {comment}\n" + yaml.safe_dump(data, sort_keys=False))
            load_recipe(path)  # a setting that makes the recipe invalid: its one-line error, naming the file
            points.append((path, chosen))
    return points


def run_point(recipe: Path, store_root: str, tasks: list[str], options: dict, text: str | None, tokens: int) -> dict:
    """One point: built, measured, evaluated (each through the store's cache); its row of the sweep."""

    built = build(recipe, store_root)
    measured = measure_variant(str(built.path), None, text, tokens, store_root)
    kld = measured.logits["response_tokens"]["kl_divergence"]
    row = {
        "variant": built.manifest.variant,
        "bits_per_weight": built.manifest.plan.average_bits_per_weight,
        "kld_mean": kld["mean"],
        "kld_stderr": kld["mean_stderr"],
        "kld_n": kld["n"],
        "tasks": {},
    }
    for task in tasks:
        result = evaluate(str(built.path), task, artifacts=Path(store_root), **options)
        row["tasks"][task] = {
            "score": result.score,
            "ci95": result.ci95,
            "items": result.items,
            "repeats": result.repeats,
        }
    return row


def sweep(
    recipes: list[Path],
    settings: list[str],
    tasks: list[str],
    limit: int | None = None,
    text: str | None = None,
    tokens: int = 4096,
    artifacts: StoreLocation = Path("artifacts"),
    ray: str | None = None,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Sweep:
    """Builds, measures and evaluates every point; writes ``<store>/sweeps/<name>-<key>.json`` and returns that
    record (``stored_at``: the file)."""
    if not recipes:
        raise UserError("quantlab sweep: name at least one recipe")
    if not tasks:
        raise UserError("--tasks: give at least one lm-eval task name, e.g. --tasks zoo_gpqa_style")
    parsed = [parse_setting(s) for s in settings]
    store = as_store(artifacts)
    name = load_recipe(recipes[0]).name if len(recipes) == 1 else "recipes"
    key = content_key({"recipes": [str(r) for r in recipes], "settings": settings, "tasks": tasks, "limit": limit})[:12]
    folder = store.root / "sweeps" / f"{name}-{key}"
    points = sweep_points(recipes, parsed, folder)
    options = {"limit": limit}
    jobs = [(path, str(store.root), tasks, options, text, tokens) for path, _ in points]
    if ray is not None:
        if progress:
            progress(f"{len(jobs)} sweep points as Ray tasks")
        run_on_ray(run_point, jobs, ray, workers)
    rows = []
    for (path, chosen), job in zip(points, jobs):
        if progress:
            progress(f"sweep point {path.stem}")
        rows.append({"recipe": str(path), "settings": chosen} | run_point(*job))
    record = {
        "name": name,
        "settings": settings,
        "tasks": tasks,
        "limit": limit,
        "text": text,
        "tokens": tokens,
        "points": rows,
    }
    out = folder / "sweep.json"
    stored = Sweep.from_dict(record, out)
    atomic_write_text(out, stored.to_json(indent=1))
    return Sweep.from_json(out).at(out)  # as stored (JSON's types), as a report reads it
