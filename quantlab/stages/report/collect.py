"""What a report shows, read from the store only (manifests, measure.json, eval results, attribution-*.json).

Nothing here computes a model output: a report is a view of what ``build``, ``measure``, ``eval`` and
``attribute`` stored, so re-running it on the same store gives the same numbers, and every number has the
command that stored it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from quantlab.errors import UserError
from quantlab.runtimes import named_backend, runtime_label
from quantlab.statistics import flips
from quantlab.store import ArtifactStore, as_store, read_json
from quantlab.store.records import Attribution, Audit, Evaluation, Measurement


@dataclass
class Variant:
    name: str
    folder: Path
    manifest: dict
    measure: dict | None
    evals: list[Evaluation] = field(default_factory=list)
    served_measures: list[dict] = field(default_factory=list)  # measure/<engine>.json: served by an engine

    @property
    def bits(self) -> float:
        return self.manifest["plan"]["average_bits_per_weight"]

    @property
    def measurement(self) -> dict:
        """Its measurement: ask only a variant that has one (``measure`` is None until ``quantlab measure``)."""
        if self.measure is None:
            raise ValueError(f"{self.name} has no measurement")
        return self.measure


@dataclass
class Comparison:
    """Every variant evaluated on one task with identical settings (the same items, seeds and decoding)."""

    task: str
    settings: dict
    results: dict[str, Evaluation]  # variant -> stored evaluation

    @property
    def items(self) -> int:
        return next(iter(self.results.values())).items

    @property
    def repeats(self) -> int:
        return next(iter(self.results.values())).repeats

    def decoding(self) -> str:
        s = self.settings
        how = "greedy" if s["temperature"] == 0 else f"temperature {s['temperature']:g}, top-p {s['top_p']:g}"
        extra = [f"backend {named_backend(s)}"] if named_backend(s) else []
        extra += [f"served by {runtime_label(s)}"] if s.get("engine") else []
        extra += [f"reasoning effort {s['reasoning_effort']}"] if s.get("reasoning_effort") else []
        extra += [f"chat template {s['chat_template']}"] if s.get("chat_template") not in (None, "model") else []
        return ", ".join([how] + extra)


@dataclass
class Store:
    artifacts: Path
    variants: list[Variant]
    comparisons: list[Comparison]
    attributions: list[dict]
    baseline: str | None
    audits: list[dict] = field(default_factory=list)  # audits/*.json: endpoints checked against a reference


def collect(artifacts: ArtifactStore | Path, names: list[str] | None = None, baseline: str | None = "bf16") -> Store:
    store = as_store(artifacts)
    if not store.root.is_dir():
        raise UserError(f"{store.root}: no such store; build and evaluate variants first (quantlab demo)")
    available = store.built()
    if names:
        missing = [n for n in names if n not in available]
        if missing:
            raise UserError(
                f"{', '.join(missing)}: not built in {store.root} (built: {', '.join(available) or 'none'})"
            )
    if not (names or available):
        raise UserError(
            f"{store.root}: no variant built there yet; build one first (quantlab build mxfp4, or quantlab demo)"
        )
    variants = []
    for name in names or available:
        folder = store.variant_folder(name)
        measure = ArtifactStore.measurement_path(folder)
        manifest = store.manifest(folder)
        measured = Measurement.from_json(measure).to_dict() if measure.is_file() else None
        variant = Variant(name, folder, manifest, measured)
        variant.evals = [Evaluation.from_json(p) for p in ArtifactStore.evaluations(folder)]
        variant.served_measures = [read_json(p) for p in ArtifactStore.engine_measurements(folder)]
        variants.append(variant)
    if not names:  # highest precision first, the way a provider table lists the reference first
        variants.sort(key=lambda v: (-v.bits, v.name))
    if baseline not in {v.name for v in variants}:
        baseline = None
    attributions = [Attribution.from_json(p).to_dict() for p in store.attributions()]
    audits = [Audit.from_json(p).to_dict() for p in store.audits()]
    audits.sort(key=lambda audit: audit.get("finished", ""), reverse=True)
    return Store(store.root, variants, _comparisons(variants), attributions, baseline, audits)


def _comparisons(variants: list[Variant]) -> list[Comparison]:
    groups: dict[tuple[str, str], Comparison] = {}
    for variant in variants:
        for result in variant.evals:
            key = (result.task, result.settings_hash)
            groups.setdefault(key, Comparison(result.task, result.settings, {})).results[variant.name] = result
    # the comparisons with the most variants first, then by task name: the report's headline charts lead
    return sorted(
        groups.values(), key=lambda c: (-len(c.results), c.task, -c.items, json.dumps(c.settings, sort_keys=True))
    )


def flips_against(comparison: Comparison, baseline: str | None, variant: str) -> dict | None:
    if baseline is None or baseline == variant or baseline not in comparison.results:
        return None
    import numpy as np

    return flips(np.array(comparison.results[baseline].correct), np.array(comparison.results[variant].correct))


def eval_command(comparison: Comparison, baseline: str | None) -> str:
    """The ``quantlab eval`` line that regenerates a comparison (cache hits where the store has it)."""
    s = comparison.settings
    parts = ["quantlab", "eval", *comparison.results, "--tasks", comparison.task]
    options = {
        "--limit": s.get("limit"),
        "--repeats": s["repeats"] if s["repeats"] > 1 else None,
        "--temperature": s["temperature"] or None,
        "--top-p": s["top_p"] if s["temperature"] and s["top_p"] != 1 else None,
        "--max-new-tokens": s.get("max_new_tokens"),
        "--num-fewshot": s.get("num_fewshot"),
        "--backend": named_backend(s),
        "--engine": s.get("engine"),
        "--dtype": s.get("dtype") if s.get("engine") and s.get("dtype") != "auto" else None,
        "--load": s.get("load") if s.get("engine") and s.get("load") != "auto" else None,
        "--seed": s["seed"] or None,
        "--reasoning-effort": s.get("reasoning_effort"),
        "--chat-template": s.get("chat_template") if s.get("chat_template") not in (None, "model") else None,
    }
    for flag, value in options.items():
        if value is not None:
            parts += [flag, str(value)]
    for split, path in (s.get("data_files") or {}).items():
        parts += ["--data", f"{comparison.task}{'' if split == 'test' else ':' + split}={path}"]
    if baseline and baseline in comparison.results:
        parts += ["--baseline", baseline]
    return shlex.join(parts)


def measure_command(variants: list[Variant]) -> str:
    measured = [v for v in variants if v.measure]
    settings = measured[0].measurement.get("settings", {}) if measured else {}
    parts = ["quantlab", "measure", *(v.name for v in measured)]
    if settings.get("text"):
        parts += ["--text", settings["text"]]
    if settings.get("tokens"):
        parts += ["--tokens", str(settings["tokens"])]
    if settings.get("baseline"):
        parts += ["--baseline", settings["baseline"]]
    return shlex.join(parts)


def attribute_command(result: dict) -> str:
    s = result["settings"]
    parts = [
        "quantlab",
        "attribute",
        result["recipe_file"],
        "--tasks",
        ",".join(result["tasks"]),
        "--design",
        result["design"],
        "--factors",
        result.get("factor_granularity", "choices"),
    ]
    for flag, value in (
        ("--limit", s.get("limit")),
        ("--repeats", s["repeats"] if s["repeats"] > 1 else None),
        ("--temperature", s["temperature"] or None),
        ("--top-p", s["top_p"] if s["top_p"] != 1 else None),
        ("--seed", s["seed"] or None),
        ("--permutations", result.get("permutations") if result.get("permutations") != 200 else None),
        ("--text", s["text"]),
        ("--tokens", s["tokens"]),
        # the request; the same as the recipe's serve: reasoning_effort where it names one (accepted twice)
        ("--reasoning-effort", s.get("reasoning_effort")),
    ):
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)
