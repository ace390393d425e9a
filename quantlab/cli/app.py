"""The ``quantlab`` commands: each parses its arguments, calls one library function, and renders the result
(``quantlab.cli.render``)."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from quantlab.cli import render
from quantlab.cli.render import console
from quantlab.errors import UserError

try:  # typer >= 0.26 vendors its own click; older releases use the click package
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

app = typer.Typer(
    help="Quantization impact lab for Mixture-of-Experts language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(
    help="Benchmarks (speed and quality), as ratios against references timed in the same run.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")

ENGINE_HELP = "vllm (its OpenAI-compatible server, from .venv-vllm) or llama.cpp (llama-cpp-python's server, GGUF)."
LOAD_HELP = (
    "What the engine loads: auto (the export at its own precision path: native MXFP4, compressed-tensors, GGUF; "
    "the Hugging Face folder of an unquantized variant), hf (the dequantized Hugging Face folder), native, "
    "compressed-tensors, gguf."
)


def _serve_options(dtype: str, load: str, max_logprobs: Optional[int]):
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.runtimes.engines import LOADS
    from quantlab.runtimes.serve import ServeOptions

    if load not in LOADS:
        raise UserError(f"--load {load!r}: choose one of {', '.join(LOADS)}")
    return ServeOptions(dtype=dtype, load=load, max_logprobs=max_logprobs)


@app.command("build")
def build_command(
    recipe: Path = typer.Argument(..., help="The recipe (YAML), e.g. recipes/mxfp4.yaml."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved plan (every tensor's format, method and bits) and stop."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the artifact on disk matches (a cache hit)."),
    out: Path = typer.Option(
        Path("artifacts"),
        "--out",
        "--artifacts",
        help="Where variants go: <out>/<recipe name>/ (the store the other commands read with --artifacts).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan (--dry-run) or the manifest as JSON."),
    stream: bool = typer.Option(
        False,
        "--stream",
        help="One layer at a time: read, quantize and write each layer before the next (models larger than "
        "memory; no presets or exports).",
    ),
) -> None:
    """Build a quantized variant from a recipe: quantlab build recipes/<name>.yaml."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.stages import build as builder

    if dry_run:
        with render.status("resolving the plan", as_json):
            plan = builder.dry_run(recipe)
        return render.print_json(render.plan_json(plan)) if as_json else render.plan_table(plan)
    with render.status(f"building {recipe}", as_json) as status:

        def progress(i, n, name):
            if status is not None:
                status.update(f"quantizing {i + 1}/{n}: {name}")

        result = builder.build(recipe, out, force=force, progress=progress, stream=stream)
    if as_json:
        return render.print_json(result.manifest)
    render.build_result(result)


@app.command("import")
def import_command(
    gguf_file: Path = typer.Argument(..., help="A GGUF file quantized elsewhere (llama-quantize, a community upload)."),
    model: str = typer.Option(..., "--model", help="The model it was quantized from (a folder, a hub id, zoo:...)."),
    name: Optional[str] = typer.Option(None, "--name", help="The variant's name in the store (default: the file's)."),
    force: bool = typer.Option(False, "--force", help="Import again even when the store holds this file's import."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", "--out", help="The store to import into."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Import a GGUF file as a variant of its model: measure, eval and report then treat it like a built one."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.stages.import_gguf import import_gguf

    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"--name {name!r}: letters, digits, '.', '_' and '-' only, starting with a letter or digit")
    with render.status(f"importing {gguf_file}", as_json):
        result = import_gguf(gguf_file, model, name, artifacts, force=force)
    if as_json:
        return render.print_json(result.manifest)
    render.build_result(result)


@app.command("measure")
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
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.stages.measure.run import measure_variant

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
                    serve_options=_serve_options(dtype, load, None) if engine else None,
                    top_k=top_k,
                )
            )
    if as_json:
        return render.print_json(results)
    render.measurements(results, artifacts, markdown)


@app.command("eval")
def eval_command(
    subjects: Optional[list[str]] = typer.Argument(
        None,
        help="Built variants (artifact folders or names under --artifacts) or a model source such as zoo:tiny-gpt-oss "
        "(default: every variant in the store; in an empty store, the default model).",
    ),
    tasks: str = typer.Option(
        ..., "--tasks", help="Comma-separated lm-eval task names, e.g. zoo_aime_style,zoo_gpqa_style."
    ),
    limit: Optional[int] = typer.Option(
        None, "--limit", min=1, help="Evaluate the first N items of each task (as lm-eval's --limit)."
    ),
    repeats: int = typer.Option(
        1, "--repeats", min=1, help="Runs per task with seeds seed, seed+1, ... (sampling only; greedy runs once)."
    ),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy (the task's own settings)."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
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
    reasoning_effort: Optional[str] = typer.Option(
        None,
        "--reasoning-effort",
        help="low / medium / high, passed to the chat template as gpt-oss's reads it (none: the template's "
        "default, medium for gpt-oss).",
    ),
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Run the repeats as Ray tasks: --ray (a local cluster) or --ray ADDRESS."
    ),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="--ray: tasks at a time (local cluster)."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Run lm-eval tasks on the baseline and variants, with repeats and intervals."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.stages.evaluate.run import evaluate_tasks

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
            serve_options=_serve_options(dtype, load, None),
            concurrent=concurrent,
            ray=ray,
            workers=workers,
        )
    if as_json:
        return render.print_json(rows)
    render.evaluations(rows, temperature, top_p, baseline)


def _default_subjects(artifacts: Path, quiet: bool) -> list[str]:
    """What ``quantlab eval`` without a subject evaluates: every variant built in the store, or, in an empty
    store, the default model; said on stderr so that --json output stays clean."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.models.loading import default_model
    from quantlab.store import ArtifactStore

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


@app.command("attribute")
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
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N items of each task."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Runs per task (sampling only)."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
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
    reasoning_effort: Optional[str] = typer.Option(
        None,
        "--reasoning-effort",
        help="low / medium / high: what every cell asks for (a recipe's serve: reasoning_effort names it too).",
    ),
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
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="--ray: tasks at a time (local cluster)."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    as_json: bool = typer.Option(False, "--json", help="Print the attribution as JSON."),
) -> None:
    """Attribute a recipe's accuracy loss and KL drift to its choices (Shapley shares with 95% intervals)."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.stages.attribute import attribute

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
        return render.print_json(result)
    render.attribution(result)
    console.print(f"written: {result['path']}")


@app.command("sweep")
def sweep_command(
    recipes: list[Path] = typer.Argument(..., help="Recipes (files or shipped names); with --set, a grid of each."),
    settings: list[str] = typer.Option(
        [], "--set", help="PATH=V1,V2,...: a recipe setting and its values, e.g. groups.0.format.group_size=32,64."
    ),
    tasks: str = typer.Option("zoo_gpqa_style", "--tasks", help="Comma-separated lm-eval tasks."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N items of each task."),
    text: Optional[str] = typer.Option(None, "--text", help="Measurement text (default: measure's)."),
    tokens: int = typer.Option(4096, "--tokens", min=256, help="About this many measurement tokens."),
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Run the points as Ray tasks: --ray (a local cluster) or --ray ADDRESS."
    ),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="--ray: tasks at a time (local cluster)."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    as_json: bool = typer.Option(False, "--json", help="Print the sweep as JSON."),
) -> None:
    """Build, measure and evaluate several recipes, or a grid of one recipe's settings."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.stages.sweep import sweep

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    with render.status("sweeping", as_json) as status:
        say = (lambda message: status.update(message)) if status is not None else None
        result = sweep(recipes, settings, names, limit, text, tokens, artifacts, ray, workers, say)
    if as_json:
        return render.print_json(result)
    render.sweep(result)
    console.print(f"written: {result['path']}")


@app.command("serve")
def serve_command(
    subject: str = typer.Argument(..., help="A built variant (folder or name under --artifacts) or a model source."),
    engine: str = typer.Option(..., "--engine", help=ENGINE_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="The address to listen on (127.0.0.1: this machine only)."),
    port: Optional[int] = typer.Option(
        None, "--port", min=1, max=65535, help="The port (default: a free one, printed)."
    ),
    dtype: str = typer.Option("auto", "--dtype", help="vllm: activations' dtype (auto: the checkpoint's; float32)."),
    load: str = typer.Option("auto", "--load", help=LOAD_HELP),
    max_logprobs: Optional[int] = typer.Option(
        None,
        "--max-logprobs",
        min=1,
        help="Log-probabilities per position the server may return (default: the "
        "whole vocabulary up to 1024 tokens, else 20).",
    ),
    chat_front: bool = typer.Option(
        False,
        "--chat-front",
        help="Put the lab's chat API in front of the engine: it renders conversations with the model's template "
        "and passes reasoning_effort (what vLLM's harmony path and llama.cpp cannot do for a small harmony-shaped "
        "vocabulary). Implied by the host-mistake options below.",
    ),
    chat_template: Optional[str] = typer.Option(
        None,
        "--chat-template",
        help="Host mistake: render conversations with this template instead of the model's: chatml, final-only, "
        "plain, or a Jinja file.",
    ),
    drop_effort: bool = typer.Option(
        False, "--drop-effort", help="Host mistake: ignore the requested reasoning_effort (the stale engine)."
    ),
    drop_sampling: bool = typer.Option(
        False, "--drop-sampling", help="Host mistake: ignore the requested temperature and top_p."
    ),
    reasoning_field: str = typer.Option(
        "reasoning_content",
        "--reasoning-field",
        help="Where the chat API returns the analysis: reasoning_content or reasoning.",
    ),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
) -> None:
    """Serve a variant through a real engine's OpenAI-compatible server until Ctrl-C (or SIGTERM)."""
    import signal
    import threading

    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.runtimes.chat_front import FrontSettings
    from quantlab.runtimes.serve import serve

    options = _serve_options(dtype, load, max_logprobs)
    front: FrontSettings | None = FrontSettings(
        chat_template=chat_template or "model",
        effort_honored=not drop_effort,
        sampling_honored=not drop_sampling,
        reasoning_field=reasoning_field,
    )
    if not chat_front and front == FrontSettings():
        front = None
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with render.status(f"starting {engine} for {subject}", False):
        context = serve(subject, engine, artifacts, host, port, options, front=front)
        server = context.__enter__()
    try:
        console.print(
            f"{server.engine} ({server.version}) serves {server.subject} ({server.loaded}: {server.loaded_path}) at "
            f"{server.base_url} as model {server.model!r}; started in {server.startup_s:.1f} s; log: {server.log}",
            highlight=False,
        )
        if server.front is not None:
            console.print(
                f"chat front: {server.front.describe()}; the engine itself: {server.engine_url}", highlight=False
            )
        console.print("Ctrl-C stops it.", highlight=False)
        while not stopped.is_set() and server.alive():
            stopped.wait(0.5)
        if not server.alive():
            raise UserError(f"{server.engine} server stopped by itself ({server.died()})")
    except KeyboardInterrupt:
        pass
    finally:
        context.__exit__(None, None, None)
    console.print(f"{server.engine} server stopped", highlight=False)


@app.command("audit")
def audit_command(
    url: str = typer.Argument(
        ..., help="The endpoint's base URL, e.g. http://127.0.0.1:8000/v1 (nothing else is sent anything)."
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="The reference it claims to serve: a variant or model source (default: the default model).",
    ),
    candidates: Optional[list[str]] = typer.Option(
        None,
        "--candidates",
        help="Variants the weights check compares (repeatable; default: every variant in the store).",
    ),
    budget: Optional[int] = typer.Option(
        None, "--budget", help="Total queries, shared among the checks (default: their defaults, 168)."
    ),
    api: str = typer.Option(
        "chat", "--api", help="chat (the chat route: effort, template) or completions (prompts rendered here)."
    ),
    checks: Optional[list[str]] = typer.Option(
        None, "--check", help="Run only this check (repeatable): weights, effort, template, sampling, accuracy, shape."
    ),
    seed: int = typer.Option(0, "--seed", help="Which questions are asked (and the permutations' seed)."),
    repeats: int = typer.Option(
        1,
        "--repeats",
        help="Runs per accuracy question: 1 greedy; more at temperature 1, with pass@k (the provider study ran 32).",
    ),
    served_model: Optional[str] = typer.Option(
        None, "--served-model", help="The model name requests carry (default: the first one /v1/models lists)."
    ),
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="Declare this endpoint faithful: its next-token noise joins the weights check's calibration.",
    ),
    timeout_s: float = typer.Option(120.0, "--timeout", help="Seconds to wait for one answer."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    as_json: bool = typer.Option(False, "--json", help="Print the audit record as JSON."),
) -> None:
    """Audit an OpenAI-compatible endpoint: weights, reasoning effort, prompt format, sampling, accuracy and
    response shape, each a statistical test with its verdict and the queries it spent."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.stages.audit import audit

    with render.status("auditing", as_json) as status:
        result = audit(
            url,
            model,
            candidates,
            budget,
            api,
            seed,
            checks=checks,
            artifacts=artifacts,
            served_model=served_model,
            calibrate=calibrate,
            timeout_s=timeout_s,
            repeats=repeats,
            on_check=lambda name, queries: status.update(f"audit: {name} ({queries} queries)") if status else None,
        )
    record = result["record"]
    if as_json:
        print(record.model_dump_json(indent=1))
        return
    render.audit(record)
    console.print(f"written: {result['path']}", highlight=False)


@app.command("report")
def report_command(
    variants: list[str] = typer.Argument(None, help="Variants to show (default: every variant built in --artifacts)."),
    out: Path = typer.Option(Path("artifacts/report"), "--out", help="Folder for report.html, report.md and figures/."),
    baseline: str = typer.Option("bf16", "--baseline", help="The variant losses and flips are measured against."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", help="The store to read (nothing is recomputed)."),
) -> None:
    """Write a self-contained HTML report and its markdown twin from stored results (never recomputing)."""
    import shlex

    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.stages.report import write_report

    command = shlex.join(
        [
            "quantlab",
            "report",
            *(variants or []),
            "--out",
            str(out),
            "--baseline",
            baseline,
            "--artifacts",
            str(artifacts),
        ]
    )
    with render.status("writing the report", False):
        paths = write_report(artifacts, out, variants or None, baseline, command)
    console.print(
        f"report: {paths['html']} (self-contained), {paths['markdown']} (markdown twin, figures in {paths['figures']})"
    )


@app.command("demo")
def demo(
    count: int = typer.Option(500, min=1, help="Test items per task in the evaluation (and in the attribution)."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", help="Where the variants and results go."),
) -> None:
    """The lab end to end on the embedded default: build the shipped recipes, measure them against the baseline,
    evaluate them against bf16, attribute the compactifai-like recipe's loss, write the report (every step
    cached in artifacts/; a second run is fast)."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.pipeline import run_demo, summary
    from quantlab.plugins import registry

    model_card = registry().model_card
    if model_card is not None:
        render.model_card(model_card())
    with console.status("starting") as spinner:
        run = run_demo(
            artifacts, count, on_stage=lambda stage, run: _demo_stage(stage, run, spinner), progress=spinner.update
        )
    console.print(f"\n[bold]Summary[/bold] ({run.seconds:.0f} s)")
    for line in summary(run):
        console.print("  " + line, highlight=False)


def _demo_stage(stage: str, run, spinner) -> None:
    """Prints a finished demo stage (the spinner paused so that the lines stay clean)."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab import pipeline

    spinner.stop()
    if stage == "build":
        console.print(f"\n[bold]1. Build[/bold] {len(run.builds)} variants from {run.recipes}/")
        for result in run.builds:
            summary = result.manifest["plan"]
            state = "cached" if result.cache_hit else f"built in {result.manifest['run']['seconds']['total']:.1f} s"
            console.print(
                f"  {result.manifest['variant']:17s} {summary['average_bits_per_weight']:6.3f} bits/weight  {state}: {result.path}"
            )
    elif stage == "measure":
        console.print(
            f"\n[bold]2. Measure[/bold] each variant against the baseline on {pipeline.MEASURE_TEXT} (the AIME-style task's test text)"
        )
        render.measurements(run.measurements, run.store.root)
    elif stage == "evaluate":
        console.print(
            f"\n[bold]3. Evaluate[/bold] with lm-eval, greedy, {run.count} test items per task, reasoning effort "
            f"{pipeline.REASONING_EFFORT} through the model's chat template, flips against {pipeline.BASELINE}"
        )
        render.evaluations(run.evaluations, 0.0, 1.0, pipeline.BASELINE)
    elif stage == "serve":
        if run.served:
            console.print(
                "\n[bold]4. Serve[/bold] variants through real engines' OpenAI-compatible servers, against "
                "transformers on the same items"
            )
            render.evaluations(run.served, 0.0, 1.0, pipeline.BASELINE)
        for line in pipeline.engine_notes(run):
            console.print("  " + line, highlight=False)
    elif stage == "audit":
        if run.audit is not None:
            console.print(
                f"\n[bold]5. Audit[/bold] a host from outside: {pipeline.AUDITED[0]} served through "
                f"{pipeline.AUDITED[1]} behind a chat route that drops the reasoning effort (quantlab audit)"
            )
            render.audit(run.audit)
    elif stage == "attribute":
        console.print(
            f"\n[bold]6. Attribute[/bold] the {pipeline.ATTRIBUTED} recipe's loss on {pipeline.HEADLINE_TASK} to its choices"
        )
        render.attribution(run.attribution)
        for case, attribution in run.serving.items():
            console.print(f"\n  and the serving case {case}: its loss charged to the serving choice beside the weights")
            render.attribution(attribution)
    elif stage == "report":
        console.print(f"\n[bold]7. Report[/bold] from the store: {run.report}/")
    spinner.start()


@bench_app.command("formats")
def bench_formats(
    quality: bool = typer.Option(False, "--quality", help="Rate-distortion table (SQNR vs bits) instead of speed."),
    size: int = typer.Option(4096, min=256, help="Speed: the matrix is size x size."),
    repeats: int = typer.Option(3, min=1, help="Speed: best of this many runs."),
    plot: Optional[Path] = typer.Option(None, help="Quality: also write the rate-distortion plot (PNG) here."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Speed: print the table as Markdown (docs/formats.md)."),
) -> None:
    """Quantize/dequantize throughput of every format vs its reference and a plain copy; or, with --quality,
    SQNR against bits per weight on Gaussian and on the reference model's weights."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.bench import formats as bench

    with render.status("benchmarking", as_json) as status:
        progress = (lambda name: status.update(f"benchmarking {name}")) if status is not None else None
        result = bench.rate_distortion(progress) if quality else bench.time_formats(size, repeats, progress)
    if quality and plot is not None:
        # on use: `quantlab --help` starts without torch, transformers and lm-eval
        from quantlab.bench.plots import plot_rate_distortion

        plot_rate_distortion(result, plot)
    if as_json:
        return render.print_json(result)
    render.bench_formats(result, quality, markdown)


@bench_app.command("build-memory")
def bench_build_memory(
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    synthetic: bool = typer.Option(
        True, help="Also measure a synthetic ~100M-parameter gpt-oss (written to a temp folder)."
    ),
    stream: bool = typer.Option(
        False, "--stream", help="Instead: build --stream of a synthetic model 4x larger than an enforced limit."
    ),
    family: str = typer.Option("gpt-oss-20b", "--family", help="--stream: the synthetic model's shapes."),
    layers: int = typer.Option(12, "--layers", min=1, help="--stream: its layers."),
    experts: Optional[int] = typer.Option(None, "--experts", min=1, help="--stream: fewer experts than released."),
    ratio: float = typer.Option(4.0, "--ratio", min=1.0, help="--stream: model size over the memory limit."),
    gptq: bool = typer.Option(False, "--gptq", help="--stream: also int4 GPTQ of every expert (layer by layer)."),
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", help="--stream: where the synthetic model and the variant go (default: a temp folder)."
    ),
) -> None:
    """Peak memory of quantlab build (mxfp4 experts) against the load-only floor, the model and the output."""
    import tempfile

    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.bench import memory
    from quantlab.models.loading import default_model

    if stream:
        return _bench_streaming_memory(family, layers, experts, ratio, gptq, workdir, as_json)
    results = []
    with render.status("measuring build memory", as_json):
        results.append(memory.measure_build(default_model()))
        if synthetic:
            with tempfile.TemporaryDirectory(prefix="quantlab-synthetic-") as folder:
                results.append(
                    memory.measure_build(str(memory.synthetic_model(Path(folder) / "synthetic-gpt-oss-100m")))
                )
                results[-1]["model"] = "synthetic gpt-oss (hidden 512, 8 layers, 16 experts)"
    if as_json:
        return render.print_json(results)
    render.bench_build_memory(results)


def _bench_streaming_memory(family, layers, experts, ratio, gptq, workdir, as_json) -> None:
    import tempfile

    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.bench import memory
    from quantlab.stages.synthetic import synth_config

    synth_config(family, layers, experts)  # a wrong family or count: one line before anything is written
    runs = [("mxfp4 experts", "  - select: {component: experts}\n    format: mxfp4\n", "")]
    if gptq:
        calibration = 'calibration: {dataset: "zoo:aime-style", samples: 16, sequence_length: 64, seed: 0}\n'
        groups = "  - select: {component: experts}\n    format: {name: int4, group_size: 32}\n    method: gptq\n"
        runs.append(("int4 GPTQ experts (g32), layer by layer", groups, calibration))
    with contextlib.ExitStack() as stack:
        folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quantlab-stream-")))
        folder.mkdir(parents=True, exist_ok=True)
        results = []
        with render.status("building under a memory limit", as_json):
            for label, groups, calibration in runs:
                results.append(
                    memory.measure_streaming_build(
                        family, layers, folder, experts, groups, calibration, ratio=ratio, label=label
                    )
                )
    if as_json:
        return render.print_json(results)
    render.bench_streaming_memory(results)


@bench_app.command("families")
def bench_families(
    families: str = typer.Option(
        "gpt-oss-20b,gpt-oss-120b,qwen3-30b-a3b,mixtral-8x7b,olmoe-1b-7b", "--families", help="Comma-separated."
    ),
    layers: int = typer.Option(1, "--layers", min=1, help="Layers of each synthetic model."),
    experts: Optional[int] = typer.Option(
        None, "--experts", min=1, help="Experts of every family (default: a CPU-sized count per family)."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every synthetic family of real shapes through build (F32 export, mxfp4, int4 GPTQ, Q4_K_M), llama-quantize's
    choices, measure and a short eval."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.bench.families import run_families
    from quantlab.stages.synthetic import synth_config

    names = [f.strip() for f in families.split(",") if f.strip()]
    for name in names:
        synth_config(name, layers, experts)  # a wrong family: one line before any work
    with render.status("running the families", as_json) as status:
        say = (lambda m: status.update(m)) if status is not None else None
        rows = run_families(names, layers, dict.fromkeys(names, experts) if experts else None, progress=say)
    if as_json:
        return render.print_json(rows)
    render.bench_families(rows)


@bench_app.command("ray")
def bench_ray(
    limit: int = typer.Option(100, "--limit", min=1, help="AIME-style items each cell is evaluated on."),
    tokens: int = typer.Option(2048, "--tokens", min=256, help="Measurement tokens of each cell."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A three-factor attribution sequentially and with --ray on 1 and 2 local workers: wall times, and whether
    each stored attribution equals the sequential one."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.bench.ray_cells import compare_ray

    with render.status("attributing", as_json) as status:
        result = compare_ray(limit, tokens, progress=(lambda m: status.update(m)) if status is not None else None)
    if as_json:
        return render.print_json(result)
    render.bench_ray(result)


@bench_app.command("measure")
def bench_measure(
    variant: str = typer.Argument("mxfp4", help="A built variant (artifact folder or name under --artifacts)."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    tokens: int = typer.Option(16384, "--tokens", min=256),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Time of quantlab measure against two plain forward passes (baseline and variant) over the same tokens."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.bench.measure_cost import measure_variant_cost

    with render.status("timing", as_json):
        result = measure_variant_cost(variant, artifacts, tokens)
    if as_json:
        return render.print_json(result)
    render.bench_measure(result)


@bench_app.command("serve")
def bench_serve_command(
    recipe: Path = typer.Argument(Path("bf16"), help="The variant to serve: a shipped recipe's name or a recipe file."),
    engine: str = typer.Option("vllm", "--engine", help=ENGINE_HELP),
    items: int = typer.Option(200, "--items", min=1, help="Greedy AIME-style items, high effort."),
    dtype: str = typer.Option("auto", "--dtype", help="vllm: activations' dtype (auto: the checkpoint's)."),
    concurrent: int = typer.Option(64, "--concurrent", min=1, help="Requests in flight at once."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Evaluation throughput (generated tokens/s) through a served engine against transformers' generate on the
    same items, as a ratio in one run; the server's start-up time."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.bench.serve import bench_serve

    with render.status("benchmarking", as_json) as status:
        say = (lambda message: status.update(message)) if status is not None else None
        result = bench_serve(recipe, engine, items, dtype, concurrent, say)
    if as_json:
        return render.print_json(result)
    render.bench_serve(result)


@bench_app.command("audit")
def bench_audit_command(
    parts: Optional[list[str]] = typer.Option(
        None, "--part", help="table, false_positives, power or calibrated (repeatable; default: the first three)."
    ),
    audits: int = typer.Option(20, "--audits", min=1, help="false_positives: audits per faithful server."),
    repeats: int = typer.Option(10, "--repeats", min=1, help="power: audits per distortion and budget."),
    checks: Optional[list[str]] = typer.Option(
        None, "--check", help="false_positives: only this check; power: only the distortions it must find (repeatable)."
    ),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    docs: Path = typer.Option(Path("docs"), "--docs", help="Where bench_audit.json and audit_power.png go."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The audit against servers the lab starts (faithful and distorted): verdict table, false-positive rate
    over repeated audits, and the queries each distortion needs for 80% power."""
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.bench.audit import bench_audit, save

    chosen = tuple(parts or ("table", "false_positives", "power"))
    for part in chosen:
        if part not in ("table", "false_positives", "power", "calibrated"):
            raise UserError(f"--part {part!r}: choose table, false_positives, power or calibrated")
    with render.status("benchmarking the audit", as_json) as status:
        say = (lambda message: status.update(message)) if status is not None else None
        result = bench_audit(artifacts, audits, repeats, chosen, say, tuple(checks or ()))
    written = save(result, docs)
    if as_json:
        return render.print_json(result)
    render.bench_audit(result)
    console.print("written: " + ", ".join(str(p) for p in written), highlight=False)


def _add_plugin_commands() -> None:
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.plugins import load, registry

    for name, commands in registry().commands:
        app.add_typer(load(commands), name=name)


_add_plugin_commands()


def _given_value(param) -> str | None:
    """What the user typed for an option that failed to parse, read back from the command line."""
    for opt in getattr(param, "opts", None) or []:
        for i, arg in enumerate(sys.argv):
            if arg == opt and i + 1 < len(sys.argv):
                return sys.argv[i + 1]
            if arg.startswith(opt + "="):
                return arg[len(opt) + 1 :]
    return None


def _quiet_third_party_import_noise() -> None:
    # transformers imports torchao whenever it is installed (the dev extra), and torchao logs a warning for
    # each CUDA-only kernel library it cannot load on CPU, and torch one per enum torchao registers. They
    # are not about anything the user did; nor is bitsandbytes' warning that an optional CPU kernel package
    # (`kernels`, a hub download) is missing.
    import logging

    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


# Options whose value may be left out (typer has no optional-value options): ``--ray`` alone means a local cluster.
OPTIONAL_VALUES = {"--ray": "local"}


def _optional_values(args: list[str]) -> list[str]:
    """``args`` with the implied value after an optional-value option given bare (last, or before an option)."""
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg in OPTIONAL_VALUES and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUES[arg])
    return out


def main() -> None:
    """Entry point: runs the app, turning usage mistakes and ``UserError`` into one line and exit code 2."""
    _quiet_third_party_import_noise()
    command = typer.main.get_command(app)
    try:
        command.main(args=_optional_values(sys.argv[1:]), prog_name="quantlab", standalone_mode=False)
    except UserError as error:
        Console(stderr=True).print(f"error: {error}", markup=False, soft_wrap=True)
        sys.exit(2)
    except click_exceptions.NoArgsIsHelpError as error:
        sys.stdout.write(error.ctx.get_help() + "\n")
        sys.exit(0)
    except click_exceptions.UsageError as error:
        where = f"{error.ctx.command_path}: " if error.ctx else ""
        message = " ".join(error.format_message().split())
        given = _given_value(getattr(error, "param", None))
        if given is not None:
            message += f" (got {given!r})"
        Console(stderr=True).print(f"error: {where}{message} (see --help)", markup=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)


if __name__ == "__main__":
    main()
