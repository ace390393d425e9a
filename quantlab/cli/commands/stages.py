"""``quantlab measure``, ``eval``, ``attribute`` and ``sweep``: the stages that compare variants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from quantlab.cli import render
from quantlab.cli.options import (
    ENGINE_HELP,
    LOAD_HELP,
    Artifacts,
    Limit,
    RayWorkers,
    ReasoningEffort,
    Repeats,
    Temperature,
    TopP,
    serve_options,
)
from quantlab.cli.render import console
from quantlab.errors import UserError
from quantlab.models.loading import default_model
from quantlab.stages.attribute import attribute
from quantlab.stages.evaluate.compare import evaluate_tasks
from quantlab.stages.measure.run import measure_variant
from quantlab.stages.sweep import sweep
from quantlab.store import ArtifactStore


def measure_command(
    variants: list[str] = typer.Argument(..., help="Built variants: artifact folders or names under --artifacts."),
    baseline: Optional[str] = typer.Option(
        None, "--baseline", help="Another built variant to compare against (default: the variant's source model)."
    ),
    text: Optional[str] = typer.Option(
        None,
        "--text",
        help="Evaluation text: a .txt or .jsonl file, or zoo:aime-style:SPLIT:EFFORT "
        "(default: the reference model's validation split, both efforts).",
    ),
    tokens: int = typer.Option(16384, "--tokens", min=256, help="About this many evaluation tokens."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", help="Where variants are looked up by name."),
    as_json: bool = typer.Option(False, "--json", help="Print the full results as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the summary table as Markdown (docs/measure.md)."),
    force: bool = typer.Option(False, "--force", help="Measure again even when the stored measurement matches."),
    scoring: str = typer.Option(
        "rows",
        "--scoring",
        help="rows: one document per row, answer tokens marked; llama-perplexity: a plain --text in chunks of --ctx "
        "tokens, the second half of each scored, exactly as llama.cpp's llama-perplexity (for its published KLD tables).",
    ),
    ctx: Optional[int] = typer.Option(
        None, "--ctx", help="--scoring llama-perplexity: the chunk length (default: the model's context, at most 512)."
    ),
    engine: Optional[str] = typer.Option(
        None,
        "--engine",
        help="Also serve each variant through this engine and measure it from its prompt log-probabilities: vllm.",
    ),
    dtype: str = typer.Option("auto", "--dtype", help="--engine vllm: activations' dtype (auto: the checkpoint's)."),
    load: str = typer.Option("auto", "--load", help="--engine: " + LOAD_HELP),
    top_k: Optional[int] = typer.Option(
        None,
        "--top-k",
        min=1,
        help="--engine: log-probabilities per position (default: the whole vocabulary up to "
        "1024 tokens, else 20; below the vocabulary the KL is a lower bound, docs/serving.md).",
    ),
) -> None:
    """Per-expert error, routing drift, perplexity and KL drift of variants against their baseline."""
    results = []
    for variant in variants:
        with render.status(f"measuring {variant}", as_json):
            results.append(
                measure_variant(
                    variant,
                    baseline,
                    text,
                    tokens,
                    artifacts,
                    force=force,
                    scoring=scoring,
                    n_ctx=ctx,
                    engine=engine,
                    serve_options=serve_options(dtype, load, None) if engine else None,
                    top_k=top_k,
                )
            )
    if as_json:
        return render.print_json([render.measurement_json(r) for r in results])
    render.measurements(results, artifacts, markdown)


def eval_command(
    subjects: Optional[list[str]] = typer.Argument(
        None,
        help="Built variants (artifact folders or names under --artifacts) or a model source such as zoo:tiny-gpt-oss "
        "(default: every variant in the store; in an empty store, the default model).",
    ),
    tasks: str = typer.Option(
        ..., "--tasks", help="Comma-separated lm-eval task names, e.g. zoo_aime_style,zoo_gpqa_style."
    ),
    limit: Limit = None,
    repeats: Repeats = 1,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    max_new_tokens: Optional[int] = typer.Option(
        None, "--max-new-tokens", min=1, help="Override the task's generation length."
    ),
    seed: int = typer.Option(0, "--seed"),
    baseline: Optional[str] = typer.Option(
        None, "--baseline", help="Compare each subject with this one: flips and McNemar's p."
    ),
    data: list[str] = typer.Option(
        [],
        "--data",
        help="A local copy of a real task's data: TASK=path.jsonl, or TASK:SPLIT=path.jsonl for another split (repeatable).",
    ),
    num_fewshot: Optional[int] = typer.Option(
        None, "--num-fewshot", min=0, help="Override the task's number of few-shot examples."
    ),
    backend: str = typer.Option(
        "hf",
        "--backend",
        help="hf (in-process transformers), llama.cpp (the variant's GGUF export in-process), "
        "endpoint (an OpenAI-compatible server someone else runs, --endpoint).",
    ),
    engine: Optional[str] = typer.Option(
        None, "--engine", help="Serve each subject through this engine for the evaluation: " + ENGINE_HELP
    ),
    dtype: str = typer.Option("auto", "--dtype", help="--engine vllm: activations' dtype (auto: the checkpoint's)."),
    load: str = typer.Option("auto", "--load", help="--engine: " + LOAD_HELP),
    concurrent: int = typer.Option(
        64,
        "--concurrent",
        min=1,
        help="--engine: requests in flight at once (the engine batches them; 64: lm-eval's batch for transformers).",
    ),
    baseline_engine: str = typer.Option(
        "same",
        "--baseline-engine",
        help="Where --baseline runs: same (as the subjects), transformers (in-process), vllm or llama.cpp.",
    ),
    endpoint: Optional[str] = typer.Option(
        None,
        "--endpoint",
        help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (backend endpoint).",
    ),
    gen: list[str] = typer.Option(
        [],
        "--gen",
        help="A generation setting, for all tasks (max_gen_toks=128) or one (zoo_aime_style:max_gen_toks=32); repeatable.",
    ),
    chat_template: Optional[str] = typer.Option(
        None,
        "--chat-template",
        help="How prompts are rendered: model (the model's own template; the default for a chat model), chatml, "
        "final-only (harmony with the analysis channel skipped), plain (no template: lm-eval's default for "
        "a model without one), or a Jinja file.",
    ),
    reasoning_effort: ReasoningEffort = None,
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Run the repeats as Ray tasks: --ray (a local cluster) or --ray ADDRESS."
    ),
    workers: RayWorkers = None,
    artifacts: Artifacts = Path("artifacts"),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Run lm-eval tasks on the baseline and variants, with repeats and intervals."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise UserError("--tasks: give at least one lm-eval task name, e.g. --tasks zoo_aime_style")
    if not subjects:
        subjects = _default_subjects(artifacts, as_json)
    with render.status("evaluating", as_json) as spinner:
        rows = evaluate_tasks(
            subjects,
            names,
            baseline,
            _data_option(data),
            _gen_option(gen, names),
            progress=spinner.update if spinner is not None else None,
            baseline_engine=baseline_engine,
            limit=limit,
            repeats=repeats,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            artifacts=artifacts,
            backend=backend,
            num_fewshot=num_fewshot,
            endpoint=endpoint,
            chat_template=chat_template,
            reasoning_effort=reasoning_effort,
            engine=engine,
            serve_options=serve_options(dtype, load, None),
            concurrent=concurrent,
            ray=ray,
            workers=workers,
        )
    if as_json:
        return render.print_json([row.to_dict() for row in rows])
    render.evaluations(rows, temperature, top_p, baseline)


def _default_subjects(artifacts: Path, quiet: bool) -> list[str]:
    """What ``quantlab eval`` without a subject evaluates: every variant built in the store, or, in an empty
    store, the default model; said on stderr so that --json output stays clean."""
    built = ArtifactStore(artifacts).built()
    subjects = built or [default_model()]
    what = (
        f"every variant built in {artifacts}/ ({', '.join(built)})"
        if built
        else f"the default model {subjects[0]} ({artifacts}/ holds no variant)"
    )
    Console(stderr=True).print(f"no subject given: evaluating {what}", highlight=False)
    return subjects


def _data_option(data: list[str]) -> dict[str, dict[str, Path]]:
    """--data TASK[:SPLIT]=path, repeatable, as {task: {split: path}}."""
    files: dict[str, dict[str, Path]] = {}
    for item in data:
        if "=" not in item:
            raise UserError(f"--data {item!r}: give TASK=path, e.g. --data aime25=../shared/data/aime2025/test.jsonl")
        task_name, path = item.split("=", 1)
        task_name, _, split = task_name.strip().partition(":")
        files.setdefault(task_name, {})[split or "test"] = Path(path)
    return files


def _gen_option(gen: list[str], tasks: list[str]) -> dict[str, dict]:
    """--gen [TASK:]key=value, repeatable, as {task: {key: value}} (values read as JSON where they parse)."""
    generation: dict[str, dict] = {}
    for item in gen:
        setting, equals, value = item.partition("=")
        scope, _, key = setting.rpartition(":")
        if not equals or not key:
            raise UserError(
                f"--gen {item!r}: give key=value or TASK:key=value, e.g. --gen zoo_aime_style:max_gen_toks=128"
            )
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        for task_name in [scope] if scope else tasks:
            generation.setdefault(task_name, {})[key] = parsed
    return generation


def attribute_command(
    recipe: Path = typer.Argument(
        ..., help="The recipe whose choices are the factors, e.g. recipes/compactifai-like.yaml."
    ),
    tasks: str = typer.Option("zoo_aime_style", "--tasks", help="Comma-separated lm-eval tasks."),
    design: str = typer.Option(
        "shapley",
        "--design",
        help="shapley (exact up to 6 factors, sampled beyond), one-at-a-time, leave-one-out or factorial (up to 4 factors).",
    ),
    permutations: int = typer.Option(
        200,
        "--permutations",
        min=2,
        help="Shapley beyond 6 factors: random orders sampled (its error is printed per factor).",
    ),
    factors: str = typer.Option(
        "choices",
        "--factors",
        help="choices: a group's method and format are separate factors; all: also its granularity "
        "(groups of N vs one scale per row); groups: each group is one factor.",
    ),
    limit: Limit = None,
    repeats: Repeats = 1,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    seed: int = typer.Option(0, "--seed", help="Evaluation seeds, permutation sampling and the bootstrap."),
    runtime: Optional[bool] = typer.Option(
        None,
        "--runtime/--no-runtime",
        help="llama.cpp running the GGUF export as a factor (default: when the recipe exports GGUF).",
    ),
    text: str = typer.Option(
        "zoo:aime-style:test:high",
        "--text",
        help="Measurement text of the KL drift and perplexity (as quantlab measure --text).",
    ),
    tokens: int = typer.Option(16384, "--tokens", min=256, help="About this many measurement tokens."),
    reasoning_effort: ReasoningEffort = None,
    engine: Optional[str] = typer.Option(
        None,
        "--engine",
        help="The runtime factor: llama.cpp (in-process on the GGUF export; the default when the recipe exports "
        "GGUF) or vllm (vLLM's server on each cell's weights, against transformers on the same weights).",
    ),
    ray: Optional[str] = typer.Option(
        None,
        "--ray",
        help="Compute the cells as Ray tasks: --ray starts a local cluster, --ray ADDRESS joins one "
        "(the store must be shared); the stored result is the sequential run's.",
    ),
    workers: RayWorkers = None,
    artifacts: Artifacts = Path("artifacts"),
    as_json: bool = typer.Option(False, "--json", help="Print the attribution as JSON."),
) -> None:
    """Attribute a recipe's accuracy loss and KL drift to its choices (Shapley shares with 95% intervals)."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    with render.status("attributing", as_json) as status:
        say = (lambda message: status.update(message)) if status is not None else None
        result = attribute(
            recipe,
            names,
            design,
            limit,
            repeats,
            temperature,
            top_p,
            seed,
            runtime,
            text,
            tokens,
            artifacts,
            say,
            factors,
            permutations,
            reasoning_effort,
            engine,
            ray,
            workers,
        )
    if as_json:
        return render.print_json(result.to_dict() | {"path": str(result.stored_at)})
    render.attribution(result)
    console.print(f"written: {result.stored_at}")


def sweep_command(
    recipes: list[Path] = typer.Argument(..., help="Recipes (files or shipped names); with --set, a grid of each."),
    settings: list[str] = typer.Option(
        [], "--set", help="PATH=V1,V2,...: a recipe setting and its values, e.g. groups.0.format.group_size=32,64."
    ),
    tasks: str = typer.Option("zoo_gpqa_style", "--tasks", help="Comma-separated lm-eval tasks."),
    limit: Limit = None,
    text: Optional[str] = typer.Option(None, "--text", help="Measurement text (default: measure's)."),
    tokens: int = typer.Option(4096, "--tokens", min=256, help="About this many measurement tokens."),
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Run the points as Ray tasks: --ray (a local cluster) or --ray ADDRESS."
    ),
    workers: RayWorkers = None,
    artifacts: Artifacts = Path("artifacts"),
    as_json: bool = typer.Option(False, "--json", help="Print the sweep as JSON."),
) -> None:
    """Build, measure and evaluate several recipes, or a grid of one recipe's settings."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    with render.status("sweeping", as_json) as status:
        say = (lambda message: status.update(message)) if status is not None else None
        result = sweep(recipes, settings, names, limit, text, tokens, artifacts, ray, workers, say)
    if as_json:
        return render.print_json(result.to_dict() | {"path": str(result.stored_at)})
    render.sweep(result)
    console.print(f"written: {result.stored_at}")
