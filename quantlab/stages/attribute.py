"""``quantlab attribute``: which choice of a recipe cost how much accuracy (and KL drift), with 95% intervals.

The recipe's choices are the *factors*: each group (split into its format and its method when the method is not
plain rounding, e.g. "low rank 25%" and "int3 factors"), the llama.cpp preset, each setting of its ``serve:``
section (a stack that ignores the requested reasoning effort, ...), and the runtime (llama.cpp running the GGUF
export instead of quantlab's torch model) when the recipe exports GGUF. A *cell* is a subset of factors; its
variant is the recipe with only those choices applied, written down as a recipe of its own, built, measured and
evaluated through ``quantlab build`` / ``measure`` / ``eval`` (all cached: a cell is never built twice).

Values are per item: ``loss(cell)[i]`` is 100 x (baseline correct - cell correct) on item ``i`` (mean over
repeats). Every design (``quantlab.stages.factor_designs``) is linear in the cell values, so each share is the mean of a
per-item contribution, and resampling items (every cell saw the same items) gives a paired bootstrap interval
for every share, the interaction remainder and the total at once. KL drift is attributed the same way from the
per-problem answer-token KL sums of each cell's measurement, resampling problems.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantlab.errors import UserError
from quantlab.export import llama_cpp_export, llama_cpp_exports
from quantlab.formats import get_format, ggml
from quantlab.methods import DEFAULT_METHOD, get_method
from quantlab.recipe import KEEP, Group, Named, Recipe, Selector, Serve, load_recipe
from quantlab.runtimes.engines import get_engine
from quantlab.runtimes.serve import ServeOptions
from quantlab.stages import factor_designs as attribution
from quantlab.stages.build import build
from quantlab.stages.evaluate.run import evaluate
from quantlab.stages.measure.run import measure_variant
from quantlab.stages.parallel import run_on_ray
from quantlab.statistics import RESAMPLES, paired_bootstrap
from quantlab.store import StoreLocation, as_store, atomic_write_text, content_key
from quantlab.store.records import Attribution, Measurement

DESIGNS = ("shapley", "one-at-a-time", "leave-one-out", "factorial")
SCHEMA_VERSION = 1
DEFAULT_TEXT = "zoo:aime-style:test:high"  # the AIME-style task's own test text, teacher-forced


@dataclass(frozen=True)
class Factor:
    key: str  # stable id: groups[0].format, groups[0].method, preset, serve.reasoning_effort, runtime
    label: str  # what a reader sees
    kind: str  # weights | serving | runtime


GRANULARITIES = ("choices", "groups", "all")


def _runs_gguf(engine: str | None) -> bool:
    """Whether the runtime factor's engine runs the GGUF export (llama.cpp, in-process, as the default)."""
    return engine is None or get_engine(engine).runs_the_gguf_export


RUNTIME_LABELS = {
    "llama.cpp": "llama.cpp runtime (model.gguf)",
    "vllm": "vLLM runtime (served, its kernels on the cell's weights)",
}


def recipe_factors(
    recipe: Recipe, runtime: bool, granularity: str = "choices", engine: str = "llama.cpp"
) -> list[Factor]:
    """The factors of a recipe. ``choices``: a group's method and its format are separate factors (when the
    method is not plain rounding); ``all``: also its granularity (groups of N values against one scale per row,
    for the formats that have both); ``groups``: each group whole (2^n cells grow fast)."""
    factors = []
    if recipe.preset:
        factors.append(Factor("preset", f"llama.cpp preset {recipe.preset}", "weights"))
    for i, group in enumerate(recipe.groups):
        name = group.name or f"groups[{i}]"
        method = get_method(group.method.name)
        split_method = granularity != "groups" and not method.plain_rounding and group.format.name != KEEP
        split_granularity = granularity == "all" and _per_row_possible(group.format)
        if not (split_method or split_granularity):
            what = "" if method.plain_rounding else f"{_method_label(group.method)}, "
            factors.append(Factor(f"groups[{i}]", f"{name}: {what}{_format_label(group.format)}", "weights"))
            continue
        if split_method:
            factors.append(Factor(f"groups[{i}].method", f"{name}: {_method_label(group.method)}", "weights"))
        shown = (
            group.format.model_copy(
                update={"params": {k: v for k, v in group.format.params.items() if k != "group_size"}}
            )
            if split_granularity
            else group.format
        )
        factors.append(
            Factor(
                f"groups[{i}].format",
                f"{name}: {_format_label(shown)}" + (" factors" if method.stores_factors else ""),
                "weights",
            )
        )
        if split_granularity:
            factors.append(
                Factor(
                    f"groups[{i}].granularity",
                    f"{name}: groups of {group.format.params['group_size']} (against one scale per row)",
                    "weights",
                )
            )
    for key, value in (recipe.serve.departures() if recipe.serve else {}).items():
        factors.append(Factor(f"serve.{key}", _serving_label(key, value, recipe.serve), "serving"))
    if runtime:
        factors.append(Factor("runtime", RUNTIME_LABELS[engine], "runtime"))
    return factors


def _serving_label(key: str, value, serve) -> str:
    if key == "effort_honored":
        return f"requested effort ({serve.reasoning_effort}) not honored"
    if key == "chat_template":
        return f"chat template {value}"
    return f"served with {key.replace('_', ' ')} {value}"


def _per_row_possible(fmt: Named) -> bool:
    """A format given a group size that also takes one scale per row (group_size None: the integer formats)."""
    if fmt.params.get("group_size") is None:
        return False

    try:
        get_format(fmt.name, **(fmt.params | {"group_size": None}))
    except (UserError, TypeError, ValueError):
        return False
    return True


def _format_label(fmt: Named) -> str:
    """int3(group_size=32, symmetric=True) -> 'int3 g32' (the parameters a reader needs)."""
    params = dict(fmt.params)
    parts = [fmt.name] + ([f"g{params.pop('group_size')}"] if "group_size" in params else [])
    if params.pop("symmetric", True) is False:
        parts.append("asymmetric")
    parts += [f"{k}={v}" for k, v in params.items()]
    return " ".join(parts)


def _method_label(method: Named) -> str:
    return get_method(method.name).label(method.params)


def cell_recipe(recipe: Recipe, cell: frozenset[str], runtime: bool, keys: set[str] | None = None) -> Recipe | None:
    """The recipe with only the weight factors in ``cell`` applied (``keys``: all the factors, by default the
    ``choices`` ones); None when that leaves the model unchanged (and no GGUF is needed for the runtime).

    A group's format alone is plain rounding to it; a low-rank method alone keeps the factors as stored; a
    data-driven method (gptq, imatrix) without its format changes nothing; the format without its granularity
    takes one scale per row; a group left out leaves its tensors to the groups before it."""
    keys = {f.key for f in recipe_factors(recipe, runtime)} if keys is None else keys
    groups = []
    for i, group in enumerate(recipe.groups):
        if f"groups[{i}]" in keys:
            if f"groups[{i}]" in cell:
                groups.append(group)
            continue

        def applied(choice: str, i: int = i) -> bool:  # a choice that is not a factor of its own goes with the group
            return f"groups[{i}].{choice}" not in keys or f"groups[{i}].{choice}" in cell

        if f"groups[{i}].format" in cell:
            update = {} if applied("method") else {"method": Named(name=DEFAULT_METHOD)}
            if not applied("granularity"):
                update["format"] = group.format.model_copy(
                    update={"params": group.format.params | {"group_size": None}}
                )
            groups.append(group.model_copy(update=update))
        elif f"groups[{i}].method" in cell and get_method(group.method.name).changes_weights_alone:
            groups.append(group.model_copy(update={"format": Named(name=KEEP)}))
    preset = recipe.preset if "preset" in cell else None
    if not groups and preset is None:
        if not (runtime and "runtime" in cell):
            return None
        groups = [Group(select=Selector(re=".*"), format=Named(name=KEEP))]  # the baseline, exported
    # A cell keeps the GGUF export (the llama.cpp runtime runs it) but not the native gpt-oss layout: that is no
    # factor, and it needs every expert in MXFP4, which a cell without the experts' format does not have.
    exports = sorted(set(llama_cpp_exports(recipe.exports)) | ({llama_cpp_export()} if runtime else set()))
    return recipe.model_copy(update={"preset": preset, "groups": groups, "exports": exports, "serve": None})


def _cell_code(factors: list[Factor], cell: frozenset[str]) -> str:
    """'1.0.1': which weight factors a cell applies (the runtime needs the GGUF, so it is part of the build)."""
    return ".".join("1" if f.key in cell else "0" for f in factors if f.kind == "weights")


class CellRunner:
    """Builds, measures and evaluates cells on demand, each once."""

    def __init__(
        self,
        recipe: Recipe,
        factors: list[Factor],
        eval_options: dict,
        text: str,
        tokens: int,
        artifacts: StoreLocation,
        progress: Callable[[str], None] | None,
        granularity: str = "choices",
        serve: Serve | None = None,
        engine: str = "llama.cpp",
    ):
        self.recipe, self.factors, self.eval_options = recipe, factors, eval_options
        self.engine = engine
        self.serve = serve or Serve()
        self.text, self.tokens, self.store, self.progress = text, tokens, as_store(artifacts), progress
        self.runtime = any(f.kind == "runtime" for f in factors)
        self.cells = self.store.cells_folder(recipe.name, granularity)
        self.scores: dict[tuple[frozenset, str], dict] = {}
        self.measures: dict[frozenset, Measurement | None] = {}
        self.subjects: dict[frozenset, str] = {}

    def _say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    def subject(self, cell: frozenset) -> str:
        """The built cell's folder (or the baseline model's source), built if needed."""
        weights = frozenset(k for k in cell if not k.startswith("serve."))
        gguf_runtime = self.runtime and _runs_gguf(self.engine)
        if gguf_runtime and "runtime" not in weights:
            weights = weights | {"runtime"}  # same build either way: one GGUF-exporting build per weight cell
        if not gguf_runtime:
            weights = weights - {"runtime"}  # a served engine loads the cell's own Hugging Face folder
        if weights in self.subjects:
            return self.subjects[weights]
        derived = cell_recipe(self.recipe, weights, gguf_runtime, {f.key for f in self.factors})
        if derived is None:
            subject = self.recipe.model
        else:
            code = _cell_code(self.factors, weights)
            derived = derived.model_copy(update={"name": f"{self.recipe.name}.{code}"})
            path = self.cells / f"{derived.name}.yaml"
            applied = frozenset(k for k in weights if self._kind(k) == "weights")
            atomic_write_text(
                path, f"# attribution cell of {self.recipe.name}: {self.describe(applied)}\n" + derived.as_yaml()
            )
            self._say(f"building cell {code}")
            subject = str(build(path, self.cells).path)
        self.subjects[weights] = subject
        return subject

    def describe(self, cell: frozenset) -> str:
        on = [f.label for f in self.factors if f.key in cell]
        return " + ".join(on) if on else "baseline (no factor)"

    def score(self, cell: frozenset, task: str) -> dict:
        key = (cell, task)
        if key not in self.scores:
            applied = {k.removeprefix("serve.") for k in cell if k.startswith("serve.")}
            options = dict(self.eval_options) | self.serve.evaluation_options(applied)
            if "runtime" in cell and _runs_gguf(self.engine):
                options["backend"] = "llama.cpp"
            elif "runtime" in cell:
                # the cell's weights as built (dequantized where vLLM has no kernel for their format on this
                # machine): the factor is the engine's arithmetic, as llama.cpp's is on the same GGUF
                options |= {"engine": self.engine, "serve_options": ServeOptions(load="hf")}
            subject = self.subject(cell)
            self._say(f"evaluating {self.describe(cell)} on {task}")
            result = evaluate(subject, task, artifacts=self.store, **options)
            self.scores[key] = {
                "score": result.score,
                "ci95": result.ci95,
                "items": result.items,
                "repeats": result.repeats,
                "doc_ids": result.doc_ids,
                "per_item": np.array(result.correct, dtype=float).mean(axis=1),
            }
        return self.scores[key]

    def measure(self, cell: frozenset) -> Measurement | None:
        """The measurement of the cell's weights against the baseline (quantlab measure's, stored in the cell's
        folder and reused when it matches); None for the baseline itself."""
        weights = frozenset(k for k in cell if self._kind(k) == "weights")
        if weights not in self.measures:
            subject = self.subject(weights)
            if subject == self.recipe.model:
                self.measures[weights] = None
            else:
                self._say(f"measuring {Path(subject).name}")
                self.measures[weights] = measure_variant(subject, None, self.text, self.tokens, self.store)
        return self.measures[weights]

    def _kind(self, key: str) -> str:
        return next(f.kind for f in self.factors if f.key == key)


def _design(design: str, keys: list[str], value, seed: int, permutations: int = 200) -> dict:
    """The design's per-factor vectors plus whatever else it defines (interaction, efficiency, total)."""
    if design == "shapley":
        result = attribution.shapley(keys, value, permutations=permutations, seed=seed)
        vectors = {k: np.asarray(v, dtype=float) for k, v in result["shares"].items()}
        vectors |= {
            "interaction": np.asarray(result["interaction"], dtype=float),
            "total": np.asarray(result["total"], dtype=float),
        }
        # each factor applied alone (cells the exact design has already evaluated): what it costs by itself
        vectors |= {f"solo:{k}": np.asarray(v, dtype=float) for k, v in attribution.one_at_a_time(keys, value).items()}
        extra = {"method": result["method"], "sampling_stderr": result["stderr"], "cells": result["cells_evaluated"]}
        return {"vectors": vectors, "extra": extra, "efficiency_gap": float(np.mean(result["efficiency_gap"]))}
    if design == "one-at-a-time":
        shares = attribution.one_at_a_time(keys, value)
    elif design == "leave-one-out":
        shares = attribution.leave_one_out(keys, value)
    else:
        table = attribution.full_factorial(keys, value)
        shares = {k: table[frozenset([k])] - table[frozenset()] for k in keys}  # main effects from the table
    total = value(frozenset(keys)) - value(frozenset())
    vectors = {k: np.asarray(v, dtype=float) for k, v in shares.items()} | {"total": np.asarray(total, dtype=float)}
    vectors["interaction"] = vectors["total"] - sum(vectors[k] for k in keys)
    return {"vectors": vectors, "extra": {"method": design}, "efficiency_gap": None}


def attribute(
    recipe_path: Path,
    tasks: list[str],
    design: str = "shapley",
    limit: int | None = None,
    repeats: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    runtime: bool | None = None,
    text: str = DEFAULT_TEXT,
    tokens: int = 16384,
    artifacts: StoreLocation = Path("artifacts"),
    progress: Callable[[str], None] | None = None,
    granularity: str = "choices",
    permutations: int = 200,
    reasoning_effort: str | None = None,
    engine: str | None = None,
    ray: str | None = None,
    workers: int | None = None,
) -> Attribution:
    """Attributes the recipe's accuracy loss on each task (and its KL drift) to its factors; writes
    ``<artifacts>/attribution/<recipe>/attribution-<settings hash>.json`` (attributions of one recipe under
    other settings stay beside it) and returns that record (``stored_at``: the file). ``reasoning_effort``: what every
    cell asks for, unless the recipe's ``serve:`` names it. ``ray``: compute the cells as Ray tasks first
    (``quantlab.stages.parallel``: "local" or a cluster address), ``workers`` of them at a time on a local
    cluster; the attribution itself then reads them from the store, as a sequential run would."""
    if design not in DESIGNS:
        raise UserError(f"--design {design!r}: choose one of {', '.join(DESIGNS)}")
    if granularity not in GRANULARITIES:
        raise UserError(f"--factors {granularity!r}: choose one of {', '.join(GRANULARITIES)}")
    recipe = load_recipe(recipe_path)
    if engine is not None and engine not in RUNTIME_LABELS:
        raise UserError(f"--engine {engine!r}: the runtime factor is one of {', '.join(RUNTIME_LABELS)}")
    if engine is not None and not _runs_gguf(engine):
        if runtime is False:
            raise UserError("--engine vllm makes the runtime a factor; drop --no-runtime")
        runtime = True
    elif runtime is None:  # by default whenever there is a GGUF to run and llama.cpp to run it
        runtime = bool(llama_cpp_exports(recipe.exports)) and ggml.available()
    elif runtime and not llama_cpp_exports(recipe.exports):
        raise UserError(
            f"{recipe_path}: --runtime needs a GGUF export; add exports: [{llama_cpp_export()}] to the recipe"
        )
    engine = engine or "llama.cpp"
    factors = recipe_factors(recipe, runtime, granularity, engine)
    keys = [f.key for f in factors]
    if design == "factorial" and len(keys) > attribution.FACTORIAL_MAX:
        raise UserError(
            f"--design factorial: {recipe_path} has {len(keys)} factors, at most {attribution.FACTORIAL_MAX} "
            f"fit a full factorial; use --design shapley"
        )
    serve = recipe.serve or Serve()
    if reasoning_effort is not None and serve.reasoning_effort not in (None, reasoning_effort):
        raise UserError(
            f"--reasoning-effort {reasoning_effort}: {recipe_path} asks for {serve.reasoning_effort} in its serve: section"
        )
    serve = serve.model_copy(update={"reasoning_effort": serve.reasoning_effort or reasoning_effort})
    eval_options = {"limit": limit, "repeats": repeats, "temperature": temperature, "top_p": top_p, "seed": seed}
    runner = CellRunner(recipe, factors, eval_options, text, tokens, artifacts, progress, granularity, serve, engine)
    if ray is not None:
        runner_args = (
            recipe,
            factors,
            eval_options,
            text,
            tokens,
            str(runner.store.root),
            None,
            granularity,
            serve,
            engine,
        )
        weight_keys = [f.key for f in factors if f.kind == "weights"]
        jobs = _cell_jobs(design, keys, weight_keys, tasks, seed, permutations)
        if progress:
            progress(f"computing {sum(len(j[0]) + len(j[1]) for j in jobs)} cell results as {len(jobs)} Ray tasks")

        _, ray_run = run_on_ray(_compute_cells, [(runner_args, *job) for job in jobs], ray, workers)
        if progress:
            progress(f"Ray: {ray_run.tasks} tasks on {ray_run.workers} workers in {ray_run.wall_s:.1f} s")

    result: dict[str, Any] = {
        "recipe": recipe.name,
        "recipe_file": str(recipe_path),
        "design": design,
        "factor_granularity": granularity,
        "factors": [f.__dict__ for f in factors],
        "settings": eval_options
        | {"text": text, "tokens": tokens, "reasoning_effort": serve.reasoning_effort}
        # only when not llama.cpp: attributions made before the engine was a choice keep their keys
        | ({"runtime_engine": engine} if runtime and not _runs_gguf(engine) else {}),
        "resamples": RESAMPLES,
        "seed": seed,
        "permutations": permutations,
        "tasks": {},
    }
    for task in tasks:
        base = runner.score(frozenset(), task)

        def loss(cell: frozenset, task=task, base=base):
            scored = runner.score(cell, task)
            if scored["doc_ids"] != base["doc_ids"]:
                raise UserError(f"{task}: cells were evaluated on different items; re-run with the same --limit")
            return 100.0 * (base["per_item"] - scored["per_item"])

        designed = _design(design, keys, loss, seed, permutations)
        intervals = paired_bootstrap(designed["vectors"], None, seed)
        full = runner.score(frozenset(keys), task)
        result["tasks"][task] = {
            "items": base["items"],
            "repeats": full["repeats"],
            "baseline": {k: base[k] for k in ("score", "ci95")},
            "full": {k: full[k] for k in ("score", "ci95")},
            "loss_points": intervals.pop("total"),
            "interaction_points": intervals.pop("interaction"),
            "solo_points": _pop_solo(intervals),
            "shares_points": intervals,
            "efficiency_gap": designed["efficiency_gap"],
            **designed["extra"],
        }
    result["kl"] = _kl_attribution(runner, design, [f.key for f in factors if f.kind == "weights"], seed, permutations)
    result["cells"] = _cell_table(runner)
    result["command"] = "quantlab " + shlex.join(sys.argv[1:]) if sys.argv and "quantlab" in sys.argv[0] else None
    settings = {k: result[k] for k in ("design", "factor_granularity", "settings", "permutations")} | {"tasks": tasks}
    key = content_key(settings)
    path = runner.store.attribution_path(recipe.name, key[:12])
    record = Attribution.from_dict({"schema_version": SCHEMA_VERSION, "cache_key": key} | result, path)
    atomic_write_text(path, record.to_json(indent=1))
    return record.at(path)


def cells_a_design_reads(design: str, keys: list[str], seed: int, permutations: int) -> list[frozenset]:
    """The cells ``design`` evaluates, in order: its own run on a value function that only records (every design
    is deterministic given its seed, so the real run reads the same cells)."""
    seen: dict[frozenset, None] = {frozenset(): None, frozenset(keys): None}

    def record(cell: frozenset):
        seen[frozenset(cell)] = None
        return np.zeros(1)

    _design(design, keys, record, seed, permutations)
    return list(seen)


def _cell_jobs(
    design: str, keys: list[str], weight_keys: list[str], tasks: list[str], seed: int, permutations: int
) -> list[tuple[list, list]]:
    """The attribution's cell work grouped by the weights a cell builds (one build per group, on one worker):
    [(evaluations [(cell, task)], measurements [cell])] per group."""
    groups: dict[frozenset, tuple[list, list]] = {}

    def group(cell: frozenset) -> tuple[list, list]:
        return groups.setdefault(frozenset(k for k in cell if not k.startswith("serve.") and k != "runtime"), ([], []))

    for cell in cells_a_design_reads(design, keys, seed, permutations):
        group(cell)[0].extend((cell, task) for task in tasks)
    if weight_keys:
        for cell in cells_a_design_reads(design, weight_keys, seed, permutations):
            group(cell)[1].append(cell)
    return list(groups.values())


def _compute_cells(runner_args: tuple, evaluations: list, measurements: list) -> int:
    """One Ray task: a group's build, measurements and evaluations, written to the store."""
    runner = CellRunner(*runner_args)
    for cell in measurements:
        runner.measure(cell)
    for cell, task in evaluations:
        runner.score(cell, task)
    return len(measurements) + len(evaluations)


def _kl_attribution(runner: CellRunner, design: str, keys: list[str], seed: int, permutations: int) -> dict | None:
    """Shares of the mean response-token KL(baseline ‖ cell) on the measurement text (what the model writes:
    analysis and answer), per problem resampled."""
    if not keys:
        return None
    full = runner.measure(frozenset(keys))
    assert full is not None  # the cell of every weights factor changes weights: it has a measurement
    tokens = np.array(full.response_tokens_per_row["tokens"], dtype=np.float64)

    def kl_sum(cell: frozenset):
        measured = runner.measure(cell)
        return np.zeros_like(tokens) if measured is None else np.array(measured.response_tokens_per_row["kl_sum"])

    designed = _design(design, keys, kl_sum, seed, permutations)
    intervals = paired_bootstrap(designed["vectors"], tokens, seed)
    answers = full.logits["response_tokens"]
    return {
        "text": runner.text,
        "problems": int(len(tokens)),
        "response_tokens": int(tokens.sum()),
        "kld_mean": intervals.pop("total"),
        "interaction": intervals.pop("interaction"),
        "solo": _pop_solo(intervals),
        "shares": intervals,
        "perplexity_ratio": answers["perplexity_ratio"],
        "efficiency_gap": designed["efficiency_gap"],
    }


def _pop_solo(intervals: dict) -> dict:
    return {key.removeprefix("solo:"): intervals.pop(key) for key in [k for k in intervals if k.startswith("solo:")]}


def _cell_table(runner: CellRunner) -> list[dict]:
    rows: dict[frozenset, dict] = {}
    for (cell, task), scored in sorted(
        runner.scores.items(), key=lambda item: (len(item[0][0]), sorted(item[0][0]), item[0][1])
    ):
        row = rows.setdefault(
            cell,
            {"factors": sorted(cell), "label": runner.describe(cell), "subject": runner.subject(cell), "tasks": {}},
        )
        row["tasks"][task] = {k: scored[k] for k in ("score", "ci95", "items", "repeats")}
        measured = runner.measures.get(frozenset(k for k in cell if runner._kind(k) == "weights"))
        if measured is not None:
            answers = measured.logits["response_tokens"]
            row["response_tokens"] = {
                "perplexity_ratio": answers["perplexity_ratio"],
                "kld_mean": answers["kl_divergence"]["mean"],
            }
    return list(rows.values())
