"""The lab end to end, as library code: what ``quantlab demo`` runs, stage by stage, and its five-line summary.

``run_demo`` builds the shipped recipes, measures each variant against the baseline, evaluates them all with
lm-eval (at high reasoning effort, through the model's chat template), serves some through vLLM and llama.cpp
(where installed) against transformers on the same items, attributes the compressed recipe's loss to
its choices and the two serving cases' losses (a stale engine that drops the requested effort, a host that
renders the wrong chat template) to theirs, and writes the report; every stage goes
through the store's cache, so a second run is all cache hits. It reports each stage as it ends to ``on_stage``
(the CLI renders them); it prints nothing itself.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantlab.errors import UserError
from quantlab.formats import ggml
from quantlab.recipe import SHIPPED_RECIPES
from quantlab.runtimes import runtime_label
from quantlab.runtimes.chat_front import FrontSettings
from quantlab.runtimes.engines import Engine, get_engine
from quantlab.runtimes.serve import ServeOptions, serve
from quantlab.stages.attribute import attribute
from quantlab.stages.audit import audit
from quantlab.stages.build import build
from quantlab.stages.evaluate.compare import TaskScore, evaluate_tasks
from quantlab.stages.measure.run import measure_variant
from quantlab.stages.report import write_report
from quantlab.store import ArtifactStore, as_store
from quantlab.store.records import Attribution, Measurement

VARIANTS = ["bf16", "mxfp4", "int4-rtn", "int4-gptq", "gguf-q4_k_m", "compactifai-like"]
TASKS = ["zoo_aime_style", "zoo_gpqa_style"]
HEADLINE_TASK = "zoo_aime_style"
REASONING_EFFORT = "high"  # what every evaluation asks for (the provider study ran at high effort)
ATTRIBUTED = "compactifai-like"
SERVING_CASES = ["mxfp4-stale-engine", "mxfp4-wrong-template"]  # recipes with a serve: section
MEASURE_TEXT = "zoo:aime-style:test:high"  # the headline task's own test text, teacher-forced
MEASURE_TOKENS = 8192
BASELINE = "bf16"
# Variants served through each engine (where it is installed): the variant, the engine, the tasks. llama.cpp's
# server ends generation at <|end|> for this vocabulary (docs/serving.md), so it serves the log-likelihood task.
SERVED = [("bf16", "vllm", TASKS), ("gguf-q4_k_m", "llama.cpp", ["zoo_gpqa_style"])]
SERVED_MEASURE = ("mxfp4", "vllm")  # the engine's share of the KL, vLLM's kernels on mxfp4's weights
# The audited host: mxfp4's GGUF through llama.cpp behind a chat route that drops the reasoning effort (the provider
# study's stale engine with quantized weights): the audit must name both, from outside.
AUDITED = ("mxfp4", "llama.cpp")


@dataclass
class DemoRun:
    """What the demo produced, stage by stage (each a stage's own result)."""

    store: ArtifactStore
    count: int
    recipes: Path
    builds: list[Any] = field(default_factory=list)  # BuildResult per variant
    measurements: list[Measurement] = field(default_factory=list)
    evaluations: list[TaskScore] = field(default_factory=list)
    attribution: Attribution | None = None
    serving: dict[str, Attribution] = field(default_factory=dict)  # serving case -> its attribution
    served: list[TaskScore] = field(default_factory=list)  # through an engine, against transformers
    served_measurement: Measurement | None = None  # measure_variant with an engine
    audit: Any = None  # the Audit record of the audited host (None: llama.cpp not installed)
    engines_missing: list[str] = field(default_factory=list)
    report: Path | None = None
    seconds: float = 0.0

    @property
    def headline(self) -> dict[str, TaskScore]:
        """The headline task's evaluation of each variant (its row of ``evaluations``), in build order."""
        return {row.subject: row for row in self.evaluations if row.task == HEADLINE_TASK}


def demo_variants() -> list[str]:
    """The shipped recipes the demo builds: the GGUF ones only where llama.cpp's ggml is installed."""

    return [n for n in VARIANTS if ggml.available() or not n.startswith("gguf-")]


def shipped_recipes_folder() -> Path:
    """The shipped recipes, named as a user in the repository types them (recipes/, a link to the package's
    folder) when that is where they are; manifests and the report's commands then say recipes/<name>.yaml."""

    if Path("recipes").is_dir() and Path("recipes").resolve() == SHIPPED_RECIPES:
        return Path("recipes")
    return SHIPPED_RECIPES.relative_to(Path.cwd()) if SHIPPED_RECIPES.is_relative_to(Path.cwd()) else SHIPPED_RECIPES


def run_demo(
    artifacts: ArtifactStore | Path | str = Path("artifacts"),
    count: int = 500,
    on_stage: Callable[[str, DemoRun], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> DemoRun:
    """Runs the demo into ``artifacts``; ``on_stage(stage, run)`` after each of build, measure, evaluate, serve,
    audit, attribute, report; ``progress(message)`` for what is running now."""

    started = time.perf_counter()
    store = as_store(artifacts)
    run = DemoRun(store, count, shipped_recipes_folder())

    def stage(name: str) -> None:
        if on_stage:
            on_stage(name, run)

    def say(message: str) -> None:
        if progress:
            progress(message)

    names = demo_variants()
    for name in names:
        say(f"building {name}")
        run.builds.append(build(run.recipes / f"{name}.yaml", store))
    stage("build")
    for name in names[1:]:
        say(f"measuring {name}")
        run.measurements.append(measure_variant(name, None, MEASURE_TEXT, MEASURE_TOKENS, store))
    stage("measure")
    run.evaluations = evaluate_tasks(
        names, TASKS, baseline=BASELINE, limit=count, artifacts=store, progress=say, reasoning_effort=REASONING_EFFORT
    )
    stage("evaluate")
    _serve_stage(run, names, count, say)
    stage("serve")
    _audit_stage(run, names, say)
    stage("audit")
    attributed = functools.partial(
        attribute, limit=count, text=MEASURE_TEXT, tokens=MEASURE_TOKENS, artifacts=store, progress=say
    )
    run.attribution = attributed(
        run.recipes / f"{ATTRIBUTED}.yaml",
        [HEADLINE_TASK],
        granularity="groups",
        reasoning_effort=REASONING_EFFORT,
    )
    for case in SERVING_CASES:
        run.serving[case] = attributed(run.recipes / f"{case}.yaml", [HEADLINE_TASK])
    stage("attribute")
    run.report = store.report_folder
    say("writing the report")
    write_report(
        store,
        run.report,
        names,
        BASELINE,
        f"quantlab report {' '.join(names)} --out {run.report} --artifacts {store.root}",
    )
    stage("report")
    run.seconds = time.perf_counter() - started
    return run


def installed_engines() -> list[str]:
    """The engines whose servers this machine can start."""

    found = []
    for name in Engine.names():
        try:
            get_engine(name).launcher()
        except UserError:
            continue
        found.append(name)
    return found


def _serve_stage(run: DemoRun, names: list[str], count: int, say: Callable[[str], None]) -> None:
    """The variants served by real engines, each against transformers on the same items; the engine's share of
    the KL. An engine that is not installed is named in the summary and skipped."""

    engines = installed_engines()
    run.engines_missing = sorted({engine for _, engine, _ in SERVED} - set(engines))
    for variant, engine, tasks in SERVED:
        if engine not in engines or variant not in names:
            continue
        say(f"serving {variant} through {engine}")
        run.served += evaluate_tasks(
            [variant],
            tasks,
            baseline=variant,
            baseline_engine="transformers",
            progress=say,
            limit=count,
            artifacts=run.store,
            reasoning_effort=REASONING_EFFORT,
            engine=engine,
        )
    variant, engine = SERVED_MEASURE
    if engine in engines and variant in names:
        say(f"measuring {variant} through {engine}")
        run.served_measurement = measure_variant(
            variant, None, MEASURE_TEXT, MEASURE_TOKENS, run.store, engine=engine, serve_options=ServeOptions(load="hf")
        )


def _audit_stage(run: DemoRun, names: list[str], say: Callable[[str], None]) -> None:
    """A host the lab starts with two faults, audited from outside against the reference (quantlab audit)."""

    variant, engine = AUDITED
    if engine not in installed_engines() or variant not in names:
        return
    say(f"auditing {variant} served through {engine} with the reasoning effort dropped")
    with serve(variant, engine, run.store, front=FrontSettings(effort_honored=False)) as server:
        run.audit = audit(server.base_url, artifacts=run.store)


def audit_line(run: DemoRun) -> str | None:
    """What the demo's audit found, in a sentence."""
    if run.audit is None:
        return None
    failed = [c.name for c in run.audit.checks if c.verdict == "fail"]
    weights = next(c for c in run.audit.checks if c.name == "weights")
    return (
        f"Audit of a host serving {AUDITED[0]} through {AUDITED[1]} with the reasoning effort dropped "
        f"({run.audit.queries} queries): failed {', '.join(failed) or 'nothing'}; the weights look like "
        f"{weights.detail.get('named')}; cause: {run.audit.cause}."
    )


def served_lines(run: DemoRun) -> list[str]:
    """One line per served evaluation against transformers, then ``engine_notes``."""

    lines = []
    for row in run.served:
        differ = f", {row.different_answers} of {row.items} answers differ" if row.different_answers is not None else ""
        flips = row.flips or {}
        lines.append(
            f"{row.subject} on {row.task} served by {runtime_label(row.settings)}, "
            f"{row.settings['engine_version']}: {_interval(row)} against {row.against}: "
            f"{flips['right_to_wrong']} right->wrong, {flips['wrong_to_right']} wrong->right{differ}."
        )
    return lines + engine_notes(run)


def engine_notes(run: DemoRun) -> list[str]:
    """The engine's share of the KL (where measured) and the engines that are not installed."""
    lines = []
    measured = run.served_measurement
    served = (measured.engine if measured else None) or {}
    share = served.get("runtime_share", {}).get("response_tokens")
    if measured and share:
        lines.append(
            f"{measured.variant} served by vLLM ({served['settings']['loaded']}, "
            f"{served['settings']['dtype']}): mean KLD {share['mean_kld_vllm']:.6f} against the torch "
            f"model's {share['mean_kld_torch']:.6f}: the engine's share {share['mean_kld_difference']:+.2e}."
        )
    if run.engines_missing:
        lines.append(f"Not installed here, skipped: {', '.join(run.engines_missing)} (scripts/setup.sh installs both).")
    return lines


def _interval(result: TaskScore) -> str:
    return f"{100 * result.score:.1f}% [{100 * result.ci95[0]:.1f}, {100 * result.ci95[1]:.1f}]"


def _shares(attribution: Attribution) -> str:
    """'label +x.x [lo, hi]; ...': the Shapley shares of an attribution's headline loss, largest first."""
    task = attribution.tasks[HEADLINE_TASK]
    labels = {f.key: f.label for f in attribution.factors}
    shares = sorted(task["shares_points"].items(), key=lambda item: -item[1]["value"])
    return "; ".join(f"{labels[k]} {s['value']:+.1f} [{s['ci95'][0]:+.1f}, {s['ci95'][1]:+.1f}]" for k, s in shares)


def _serving_line(case: str, attribution: Attribution) -> str:
    task = attribution.tasks[HEADLINE_TASK]
    loss = task["loss_points"]
    return (
        f"{case}: {loss['value']:.1f}-point loss [{loss['ci95'][0]:.1f}, {loss['ci95'][1]:.1f}] "
        f"({task['items']} items), charged to {_shares(attribution)}."
    )


def summary(run: DemoRun) -> list[str]:
    """The variants, the headline accuracies, the compressed recipe's perplexity against its accuracy, the
    attributions (the compressed recipe's, then each serving case's), and where the report is."""
    artifacts, results, attribution, report = run.store.root, run.headline, run.attribution, run.report
    assert report is not None and attribution is not None, "the summary of a finished run"
    base, native, compressed = results["bf16"], results["mxfp4"], results[ATTRIBUTED]
    within = base.ci95[0] <= native.score <= base.ci95[1]
    task = attribution.tasks[HEADLINE_TASK]
    labels = {f.key: f.label for f in attribution.factors}
    shares = sorted(task["shares_points"].items(), key=lambda item: -item[1]["value"])[:2]  # the two largest
    named = "; ".join(
        f"{labels[k]} {s['value']:+.1f} [{s['ci95'][0]:+.1f}, {s['ci95'][1]:+.1f}] "
        f"(alone {task['solo_points'][k]['value']:+.1f})"
        for k, s in shares
    )
    loss = 100 * (base.score - compressed.score)
    return [
        f"Variants: {', '.join(results)} built, measured and evaluated in {artifacts}/ ({base.items} items per task, "
        f"greedy, reasoning effort {REASONING_EFFORT}, the model's chat template).",
        f"{HEADLINE_TASK}: bf16 {_interval(base)}; gpt-oss-native mxfp4 {_interval(native)} "
        f"({'within' if within else 'OUTSIDE'} bf16's interval); {ATTRIBUTED} {_interval(compressed)}.",
        f"{ATTRIBUTED}: perplexity ratio {(attribution.kl or {})['perplexity_ratio']:.3f} on the task's test text "
        f"(teacher-forced) while accuracy falls {loss:.1f} points: errors compound over the chain, perplexity hides it.",
        f"Attribution of the {task['loss_points']['value']:.1f}-point loss ({task['items']} items; Shapley shares, 95% CI): {named}; "
        f"beyond the choices' solo effects (interaction): {task['interaction_points']['value']:+.1f} "
        f"[{task['interaction_points']['ci95'][0]:+.1f}, {task['interaction_points']['ci95'][1]:+.1f}].",
        *(_serving_line(case, attribution) for case, attribution in run.serving.items()),
        *served_lines(run),
        *([line] if (line := audit_line(run)) else []),
        f"Report: {report / 'report.html'} (markdown twin {report / 'report.md'}).",
    ]
