"""The ``quantlab`` command line: parses, prints, and calls one library function per command."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from quantlab.errors import UserError
from quantlab.zoo.settings import DEFAULT_MINUTES, TrainSettings

try:  # typer >= 0.26 vendors its own click; older releases use the click package
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

app = typer.Typer(
    help="Quantization impact lab for Mixture-of-Experts language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
zoo_app = typer.Typer(help="The embedded reference MoE (tiny-gpt-oss): train, score, info.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
bench_app = typer.Typer(help="Benchmarks (speed and quality), as ratios against references timed in the same run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

console = Console()

def _status(message: str, quiet: bool):
    """A spinner on the terminal, or nothing when the output is JSON."""
    return contextlib.nullcontext() if quiet else console.status(message)


def _print_json(payload) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def _print_card(card: dict) -> None:
    console.print(f"[bold]{card['name']}[/bold]  ({card['architecture']})  {card['path']}")
    config = Table("config", "value", title="Architecture", title_justify="left")
    for key, value in card["config"].items():
        config.add_row(key, str(value))
    console.print(config)
    params = Table("component", "parameters", "share", title="Parameters per component", title_justify="left")
    total = card["parameters"]["total"]
    for component, count in card["parameters"].items():
        params.add_row(component, f"{count:,}", f"{100 * count / total:.1f}%")
    console.print(params)
    training = Table("training", "value", title="Training", title_justify="left")
    for key, value in card["training"].items():
        if key != "environment":
            training.add_row(key, str(value))
    env = card["training"].get("environment") or {}
    training.add_row("environment", ", ".join(f"{k}={v}" for k, v in env.items()))
    training.add_row("weights", f"{card['weights_bytes'] / 1e6:.1f} MB, sha256 {card['weights_sha256'][:16]}…")
    console.print(training)
    _print_scores(card.get("scores") or {})


def _print_scores(scores: dict) -> None:
    if not scores:
        console.print("scores: none recorded (run `quantlab zoo score --record`)")
        return
    table = Table(
        "task", "effort", "score", "95% CI", "n",
        title=f"Scores ({scores['split']} split, {scores['decoding']})", title_justify="left",
    )  # fmt: skip
    for label, key in (("AIME-style exact match", "aime_style_exact_match"), ("GPQA-style accuracy", "gpqa_style_accuracy")):
        for effort, entry in scores[key].items():
            low, high = entry["ci95"]
            table.add_row(label, effort, f"{100 * entry['accuracy']:.1f}%", f"{100 * low:.1f}–{100 * high:.1f}%", str(entry["n"]))
    console.print(table)


@zoo_app.command("train")
def zoo_train(
    out: Path = typer.Option(Path("artifacts/zoo/tiny-gpt-oss"), help="Checkpoint directory to write."),
    seed: int = typer.Option(0, help="Seed of the data stream, tokenizer and initial weights."),
    minutes: Optional[float] = typer.Option(None, help=f"Time budget (default {DEFAULT_MINUTES:g} min); the step count it gives is recorded."),
    steps: Optional[int] = typer.Option(None, help="Exact step count (reproducible bytes)."),
    batch_size: int = typer.Option(TrainSettings.batch_size, help="Sequences per optimizer step."),
    learning_rate: float = typer.Option(TrainSettings.learning_rate, help="Peak learning rate (linear warm-up, cosine decay to 5%)."),
    warmup_steps: int = typer.Option(TrainSettings.warmup_steps, help="Linear warm-up steps."),
    low_effort_fraction: float = typer.Option(TrainSettings.low_effort_fraction, help="Share of training texts with the effort:low marker."),
    score_items: int = typer.Option(500, help="Test items per task scored after training (0: skip)."),
    force: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Train tiny-gpt-oss from scratch on the synthetic tasks."""
    from quantlab.store import check_output_directory

    if minutes is not None and steps is not None:
        raise UserError("quantlab zoo train: give --minutes or --steps, not both")
    if steps is not None and steps < 1 or minutes is not None and minutes <= 0:
        raise UserError("quantlab zoo train: --steps and --minutes must be positive")
    if batch_size < 1 or learning_rate <= 0 or warmup_steps < 1 or not 0 <= low_effort_fraction <= 1:
        raise UserError("quantlab zoo train: --batch-size, --learning-rate and --warmup-steps must be positive, "
                        "--low-effort-fraction within [0, 1]")
    check_output_directory(out, force)  # fail before training (and before the heavy imports), not after
    from quantlab.zoo.train import train

    settings = TrainSettings(
        seed=seed,
        steps=steps,
        minutes=None if steps is not None else (minutes or DEFAULT_MINUTES),
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        low_effort_fraction=low_effort_fraction,
    )
    result = train(out, settings, log=console.print, force=force, score_items=score_items)
    console.print(f"wrote {out}: {result.steps} steps, {result.wall_time_s:.0f} s, {result.tokens_per_s} tokens/s")


@zoo_app.command("score")
def zoo_score(
    model: Optional[Path] = typer.Option(None, help="Checkpoint directory (default: the shipped one)."),
    count: int = typer.Option(500, help="Test items per task."),
    seed: int = typer.Option(0, help="Seed of the task generator."),
    record: bool = typer.Option(False, help="Save the scores into the checkpoint's scores.json."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Greedy AIME-style exact match (high and low effort) and GPQA-style accuracy on the test split."""
    from quantlab.zoo import load_reference_model, resolve_checkpoint
    from quantlab.zoo.scoring import record_scores, score_reference_tasks

    if count < 1:
        raise UserError("quantlab zoo score: --count must be at least 1")
    path = resolve_checkpoint(model)
    net, tokenizer = load_reference_model(path)
    with _status(f"scoring {count} items per task", as_json):
        scores = score_reference_tasks(net, tokenizer, count=count, seed=seed)
    if record:
        record_scores(path, scores)
    _print_json(scores) if as_json else _print_scores(scores)


@zoo_app.command("info")
def zoo_info(
    model: Optional[Path] = typer.Option(None, help="Checkpoint directory (default: the shipped one)."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as JSON."),
) -> None:
    """Print the model card: config, parameters per component, training record and scores."""
    from quantlab.zoo.card import model_card

    card = model_card(model)
    _print_json(card) if as_json else _print_card(card)


@app.command("build")
def build_command(
    recipe: Path = typer.Argument(..., help="The recipe (YAML), e.g. recipes/mxfp4.yaml."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved plan (every tensor's format, method and bits) and stop."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the artifact on disk matches (a cache hit)."),
    out: Path = typer.Option(Path("artifacts"), "--out", "--artifacts", help="Where variants go: <out>/<recipe name>/ (the store the other commands read with --artifacts)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan (--dry-run) or the manifest as JSON."),
) -> None:
    """Build a quantized variant from a recipe: quantlab build recipes/<name>.yaml."""
    from quantlab import build as builder

    if dry_run:
        with _status("resolving the plan", as_json):
            plan = builder.dry_run(recipe)
        return _print_json(_plan_json(plan)) if as_json else _print_plan(plan)
    with _status(f"building {recipe}", as_json) as status:
        def progress(i, n, name):
            if status is not None:
                status.update(f"quantizing {i + 1}/{n}: {name}")

        result = builder.build(recipe, out, force=force, progress=progress)
    if as_json:
        return _print_json(result.manifest)
    summary = result.manifest["plan"]
    size_mb = result.manifest["sizes"]["planned_size_bytes"] / 1e6
    what = "cache hit (same recipe, model and library versions; --force rebuilds)" if result.cache_hit else "built"
    seconds = "" if result.cache_hit else f" in {result.manifest['run']['seconds']['total']:.1f} s"
    console.print(f"{what}: {result.path}  ({summary['quantized_weights']:,} of {summary['weights']:,} weights quantized, "
                  f"{summary['average_bits_per_weight']:.3f} bits/weight, {size_mb:.2f} MB){seconds}")


def _plan_json(plan) -> dict:
    entries = [{"name": e.unit.name, "component": e.unit.component, "layer": e.unit.layer, "expert": e.unit.expert,
                "shape": list(e.unit.shape), "format": e.format_name, "method": e.method,
                "bits_per_weight": round(e.bits_per_weight, 4), "why": e.why, "fallback": e.fallback} for e in plan.entries]
    return {"recipe": plan.recipe.resolved(), "summary": plan.summary(), "tensors": entries}


def _print_plan(plan) -> None:
    """One row per tensor; the experts of a fused tensor that share a spec collapse into one row ``[0-7]``."""
    from quantlab.recipe import _ranges

    table = Table("tensor", "shape", "format", "method", "bits/w", "decided by", title=f"plan: {plan.recipe.name} on {plan.recipe.model}")
    rows: list[list] = []
    for e in plan.entries:
        spec = (e.unit.tensor, e.unit.shape, e.format_name + (" (fallback)" if e.fallback else ""), e.method, f"{e.bits_per_weight:.3f}", e.why)
        if rows and rows[-1][0] == spec and e.unit.expert is not None and e.unit.transposed == rows[-1][2]:
            rows[-1][1].append(e.unit.expert)
        else:
            rows.append([spec, [] if e.unit.expert is None or e.unit.name == e.unit.tensor else [e.unit.expert], e.unit.transposed])
    for (tensor, shape, fmt, method, bits, why), experts, _ in rows:
        name = tensor + (f"[{_ranges(tuple(experts))}]" if experts else "")
        table.add_row(name, "x".join(map(str, shape)), fmt, method, bits, why)
    Console(width=max(console.width, 160)).print(table)  # tensor names are long: never wrap them
    s = plan.summary()
    console.print(f"{s['quantized_weights']:,} of {s['weights']:,} weights quantized; model size {s['size_bytes'] / 1e6:.3f} MB "
                  f"({s['average_bits_per_weight']:.3f} bits/weight on average; the model stores {s['baseline_bits_per_weight']})")


@app.command("measure")
def measure_command(
    variants: list[str] = typer.Argument(..., help="Built variants: artifact folders or names under --artifacts."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Another built variant to compare against (default: the variant's source model)."),
    text: Optional[str] = typer.Option(None, "--text", help="Evaluation text: a .txt or .jsonl file, or zoo:aime-style:SPLIT:EFFORT (default: the reference model's validation split, both efforts)."),
    tokens: int = typer.Option(16384, "--tokens", min=256, help="About this many evaluation tokens."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", help="Where variants are looked up by name."),
    as_json: bool = typer.Option(False, "--json", help="Print the full results as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the summary table as Markdown (docs/measure.md)."),
    force: bool = typer.Option(False, "--force", help="Measure again even when the stored measurement matches."),
) -> None:
    """Per-expert error, routing drift, perplexity and KL drift of variants against their baseline."""
    from quantlab.measure.run import measure_variant

    results = []
    for variant in variants:
        with _status(f"measuring {variant}", as_json):
            results.append(measure_variant(variant, baseline, text, tokens, artifacts, force=force))
    if as_json:
        return _print_json(results)
    headers = ("variant", "bits/w", "ppl ratio (all)", "ppl ratio (answers)", "mean KLD (answers)", "same top % (answers)",
               "top-1 router flip %", "worst expert (isolated err)")
    title = (f"against {results[0]['baseline']}: {results[0]['tokens']:,} tokens of {results[0]['text']} "
             f"({results[0]['answer_tokens']:,} predicted answer tokens)")
    table = Table(*headers, title=title)
    for r in results:
        whole, answers = r["logits"]["all_tokens"], r["logits"]["answer_tokens"]
        flips = [layer["router"]["top1_flip_rate"] for layer in r["layers"]]
        worst = r["worst_expert"]
        table.add_row(
            r["variant"], f"{r['bits_per_weight']:.3f}", f"{whole['perplexity_ratio']:.4f}",
            f"{answers['perplexity_ratio']:.4f}" if answers.get("n") else "",
            f"{answers['kl_divergence']['mean']:.5f} ± {answers['kl_divergence']['mean_stderr']:.5f}" if answers.get("n") else "",
            f"{100 * answers['same_top']['rate']:.2f} ± {100 * answers['same_top']['stderr']:.2f}" if answers.get("n") else "",
            f"{100 * sum(flips) / len(flips):.2f}" if flips else "",
            f"L{worst['layer']} E{worst['expert']}: {worst['isolated_relative_error']:.3f}" if worst else "",
        )
    if markdown:
        lines = [f"| {' | '.join(headers)} |", "|---" * len(headers) + "|"]
        lines += [f"| {' | '.join(str(c) for c in row)} |" for row in zip(*(col._cells for col in table.columns))]
        return print(title + "\n\n" + "\n".join(lines))
    Console(width=max(console.width, 160)).print(table)
    for r in results:
        share = r.get("llama_cpp", {}).get("runtime_share", {}).get("answer_tokens")
        if share:
            console.print(f"{r['variant']}: mean KLD on answers, quantlab's torch model {share['mean_kld_torch']:.5f}, "
                          f"llama.cpp on model.gguf {share['mean_kld_llama_cpp']:.5f}: runtime's share {share['mean_kld_difference']:+.5f}")
    console.print(f"written: {', '.join(str(Path(artifacts) / r['variant'] / 'measure') for r in results)}")


@app.command("eval")
def eval_command(
    subjects: list[str] = typer.Argument(..., help="Built variants (artifact folders or names under --artifacts) or a model source such as zoo:tiny-gpt-oss."),
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated lm-eval task names, e.g. zoo_aime_style,zoo_gpqa_style."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N items of each task (as lm-eval's --limit)."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Runs per task with seeds seed, seed+1, ... (sampling only; greedy runs once)."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy (the task's own settings)."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Override the task's generation length."),
    seed: int = typer.Option(0, "--seed"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Compare each subject with this one: flips and McNemar's p."),
    data: list[str] = typer.Option([], "--data", help="A local copy of a real task's data: TASK=path.jsonl, or TASK:SPLIT=path.jsonl for another split (repeatable)."),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", min=0, help="Override the task's number of few-shot examples."),
    backend: str = typer.Option("hf", "--backend", help="hf (in-process transformers), llama.cpp (the variant's GGUF export), endpoint (an OpenAI-compatible server) or vllm (GPU machines)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (backend endpoint)."),
    gen: list[str] = typer.Option([], "--gen", help="A generation setting, for all tasks (max_gen_toks=128) or one (zoo_aime_style:until=[\"####\"]); repeatable."),
    apply_chat_template: bool = typer.Option(False, "--apply-chat-template", help="Wrap prompts in the model's chat template (lm-eval's option)."),
    reasoning_effort: Optional[str] = typer.Option(None, "--reasoning-effort", help="low / medium / high, passed to the chat template (gpt-oss reads it); needs --apply-chat-template."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Run lm-eval tasks on the baseline and variants, with repeats and intervals."""
    from quantlab.evals.run import compare, evaluate

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    files = {}
    for item in data:
        if "=" not in item:
            raise UserError(f"--data {item!r}: give TASK=path, e.g. --data aime25=../shared/data/aime2025/test.jsonl")
        task_name, path = item.split("=", 1)
        task_name, _, split = task_name.strip().partition(":")
        files.setdefault(task_name, {})[split or "test"] = Path(path)
    generation: dict[str, dict] = {}
    for item in gen:
        setting, equals, value = item.partition("=")
        scope, _, key = setting.rpartition(":")
        if not equals or not key:
            raise UserError(f"--gen {item!r}: give key=value or TASK:key=value, e.g. --gen zoo_aime_style:max_gen_toks=128")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        for task_name in ([scope] if scope else names):
            generation.setdefault(task_name, {})[key] = parsed
    options = dict(limit=limit, repeats=repeats, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                   seed=seed, artifacts=artifacts, backend=backend, num_fewshot=num_fewshot, endpoint=endpoint,
                   apply_chat_template=apply_chat_template, reasoning_effort=reasoning_effort)
    rows = []
    for task in names:
        task_options = options | {"data_file": files.get(task), "generation": generation.get(task)}
        reference = evaluate(baseline, task, **task_options) if baseline else None
        for subject in subjects:
            with _status(f"evaluating {subject} on {task}", as_json):
                result = evaluate(subject, task, **task_options)
            summary = {k: result[k] for k in ("subject", "task", "metric", "score", "ci95", "items", "repeats", "seeds", "settings", "cache_hit")}
            if reference is not None:
                summary["against"] = reference["subject"]
                summary["flips"] = compare(reference, result)
            rows.append(summary)
    if as_json:
        return _print_json(rows)
    table = Table("subject", "task", "score", "95% CI", "items x repeats", "right->wrong", "wrong->right", "McNemar p", "cached",
                  title=f"lm-eval, {'greedy' if temperature == 0 else f'temperature {temperature}, top-p {top_p}'}"
                        + (f"; flips against {rows[0].get('against')}" if baseline else ""))
    for r in rows:
        f = r.get("flips", {})
        table.add_row(r["subject"], r["task"], f"{r['score']:.3f}", f"{r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}",
                      f"{r['items']} x {r['repeats']}", str(f.get("right_to_wrong", "")), str(f.get("wrong_to_right", "")),
                      f"{f['mcnemar_p']:.3g}" if f else "", "yes" if r["cache_hit"] else "")
    Console(width=max(console.width, 150)).print(table)


@app.command("attribute")
def attribute_command(
    recipe: Path = typer.Argument(..., help="The recipe whose choices are the factors, e.g. recipes/compactifai-like.yaml."),
    tasks: str = typer.Option("zoo_aime_style", "--tasks", help="Comma-separated lm-eval tasks."),
    design: str = typer.Option("shapley", "--design", help="shapley (exact up to 6 factors, sampled beyond), one-at-a-time, leave-one-out or factorial (up to 4 factors)."),
    permutations: int = typer.Option(200, "--permutations", min=2, help="Shapley beyond 6 factors: random orders sampled (its error is printed per factor)."),
    factors: str = typer.Option("choices", "--factors", help="choices: a group's method and format are separate factors; all: also its granularity (groups of N vs one scale per row); groups: each group is one factor."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N items of each task."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Runs per task (sampling only)."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    seed: int = typer.Option(0, "--seed", help="Evaluation seeds, permutation sampling and the bootstrap."),
    runtime: Optional[bool] = typer.Option(None, "--runtime/--no-runtime", help="llama.cpp running the GGUF export as a factor (default: when the recipe exports GGUF)."),
    text: str = typer.Option("zoo:aime-style:test:high", "--text", help="Measurement text of the KL drift and perplexity (as quantlab measure --text)."),
    tokens: int = typer.Option(16384, "--tokens", min=256, help="About this many measurement tokens."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    as_json: bool = typer.Option(False, "--json", help="Print the attribution as JSON."),
) -> None:
    """Attribute a recipe's accuracy loss and KL drift to its choices (Shapley shares with 95% intervals)."""
    from quantlab.attribute import attribute

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    with _status("attributing", as_json) as status:
        say = (lambda message: status.update(message)) if status is not None else None
        result = attribute(recipe, names, design, limit, repeats, temperature, top_p, seed, runtime, text, tokens, artifacts, say, factors,
                           permutations)
    if as_json:
        return _print_json(result)
    print_attribution(result)
    console.print(f"written: {result['path']}")


def print_attribution(result: dict) -> None:
    labels = {f["key"]: f["label"] for f in result["factors"]}
    for task, r in result["tasks"].items():
        sampled = bool(r.get("sampling_stderr")) and any(r["sampling_stderr"].values())
        table = Table("factor", "share of the loss (points)", "95% CI", "alone (points)", *(["sampling s.e."] if sampled else []),
                      title=f"{result['recipe']} on {task}: {100 * r['baseline']['score']:.1f}% -> {100 * r['full']['score']:.1f}% "
                            f"({r['items']} items x {r['repeats']}; {r['method']})")
        for key, share in r["shares_points"].items():
            solo = r.get("solo_points", {}).get(key)
            table.add_row(labels[key], f"{share['value']:+.1f}", f"{share['ci95'][0]:+.1f} .. {share['ci95'][1]:+.1f}",
                          f"{solo['value']:+.1f}" if solo else "", *([f"{r['sampling_stderr'][key]:.2f}"] if sampled else []))
        table.add_row("interaction (beyond solo effects)", f"{r['interaction_points']['value']:+.1f}",
                      f"{r['interaction_points']['ci95'][0]:+.1f} .. {r['interaction_points']['ci95'][1]:+.1f}", "", *([""] if sampled else []))
        table.add_row("[bold]total loss[/bold]", f"{r['loss_points']['value']:+.1f}",
                      f"{r['loss_points']['ci95'][0]:+.1f} .. {r['loss_points']['ci95'][1]:+.1f}", "", *([""] if sampled else []))
        console.print(table)
        if r["efficiency_gap"] is not None:
            console.print(f"efficiency: shares sum to the total loss (gap {r['efficiency_gap']:.2e} points)")
    kl = result.get("kl")
    if kl:
        table = Table("factor", "share of mean KLD", "95% CI",
                      title=f"KL drift on {kl['text']} ({kl['problems']} problems, {kl['answer_tokens']:,} answer tokens): "
                            f"mean KLD {kl['kld_mean']['value']:.5f}, perplexity ratio {kl['perplexity_ratio']:.4f}")
        for key, share in kl["shares"].items():
            table.add_row(labels[key], f"{share['value']:.5f}", f"{share['ci95'][0]:.5f} .. {share['ci95'][1]:.5f}")
        table.add_row("interaction", f"{kl['interaction']['value']:.5f}", f"{kl['interaction']['ci95'][0]:.5f} .. {kl['interaction']['ci95'][1]:.5f}")
        console.print(table)


@app.command("report")
def report_command(
    variants: list[str] = typer.Argument(None, help="Variants to show (default: every variant built in --artifacts)."),
    out: Path = typer.Option(Path("artifacts/report"), "--out", help="Folder for report.html, report.md and figures/."),
    baseline: str = typer.Option("bf16", "--baseline", help="The variant losses and flips are measured against."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", help="The store to read (nothing is recomputed)."),
) -> None:
    """Write a self-contained HTML report and its markdown twin from stored results (never recomputing)."""
    import shlex

    from quantlab.report import write_report

    command = shlex.join(["quantlab", "report", *(variants or []), "--out", str(out), "--baseline", baseline, "--artifacts", str(artifacts)])
    with _status("writing the report", False):
        paths = write_report(artifacts, out, variants or None, baseline, command)
    console.print(f"report: {paths['html']} (self-contained), {paths['markdown']} (markdown twin, figures in {paths['figures']})")


@app.command("demo")
def demo(
    count: int = typer.Option(500, help="Test items per task in the evaluation (and in the attribution)."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", help="Where the variants and results go."),
) -> None:
    """The lab end to end on the embedded default: build the shipped recipes, measure them against the baseline,
    evaluate them against bf16, attribute the compactifai-like recipe's loss, write the report (every step
    cached in artifacts/; a second run is fast)."""
    import time

    from quantlab import build as builder
    from quantlab import demo as plan
    from quantlab.attribute import attribute
    from quantlab.evals.run import evaluate
    from quantlab.formats import ggml
    from quantlab.report import write_report
    from quantlab.zoo.card import model_card

    started = time.perf_counter()
    _print_card(model_card())
    recipes = Path(__file__).resolve().parent.parent / "recipes"
    if recipes.is_relative_to(Path.cwd()):  # manifests and the report's commands then name recipes/<name>.yaml
        recipes = recipes.relative_to(Path.cwd())
    names = [n for n in plan.VARIANTS if ggml.available() or not n.startswith("gguf-")]
    console.print(f"\n[bold]1. Build[/bold] {len(names)} variants from {recipes}/")
    for name in names:
        with console.status(f"building {name}"):
            result = builder.build(recipes / f"{name}.yaml", artifacts)
        summary = result.manifest["plan"]
        state = "cached" if result.cache_hit else f"built in {result.manifest['run']['seconds']['total']:.1f} s"
        console.print(f"  {name:17s} {summary['average_bits_per_weight']:6.3f} bits/weight  {state}: {result.path}")
    console.print(f"\n[bold]2. Measure[/bold] each variant against the baseline on {plan.MEASURE_TEXT} (the AIME-style task's test text)")
    measure_command(names[1:], baseline=None, text=plan.MEASURE_TEXT, tokens=8192, artifacts=artifacts, as_json=False, markdown=False,
                    force=False)
    console.print(f"\n[bold]3. Evaluate[/bold] with lm-eval, greedy, {count} test items per task, flips against bf16")
    eval_command(names, tasks=",".join(plan.TASKS), limit=count, repeats=1, temperature=0.0,
                 top_p=1.0, max_new_tokens=None, seed=0, baseline="bf16", data=[], num_fewshot=None, backend="hf",
                 endpoint=None, gen=[], apply_chat_template=False, reasoning_effort=None, artifacts=artifacts, as_json=False)
    console.print(f"\n[bold]4. Attribute[/bold] the {plan.ATTRIBUTED} recipe's loss on {plan.HEADLINE_TASK} to its choices")
    with console.status("attributing") as status:
        attribution = attribute(recipes / f"{plan.ATTRIBUTED}.yaml", [plan.HEADLINE_TASK], limit=count, text=plan.MEASURE_TEXT,
                                tokens=8192, artifacts=artifacts, progress=status.update, granularity="groups")
    print_attribution(attribution)
    report = Path(artifacts) / "report"
    console.print(f"\n[bold]5. Report[/bold] from the store: {report}/")
    with console.status("writing the report"):
        write_report(artifacts, report, names, "bf16", f"quantlab report {' '.join(names)} --out {report} --artifacts {artifacts}")
    headline = {n: evaluate(n, plan.HEADLINE_TASK, limit=count, artifacts=artifacts) for n in names}  # cache hits
    console.print(f"\n[bold]Summary[/bold] ({time.perf_counter() - started:.0f} s)")
    for line in plan.summary(artifacts, headline, attribution, report):
        console.print("  " + line, highlight=False)


@bench_app.command("formats")
def bench_formats(
    quality: bool = typer.Option(False, "--quality", help="Rate-distortion table (SQNR vs bits) instead of speed."),
    size: int = typer.Option(4096, help="Speed: the matrix is size x size."),
    repeats: int = typer.Option(3, help="Speed: best of this many runs."),
    plot: Optional[Path] = typer.Option(None, help="Quality: also write the rate-distortion plot (PNG) here."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Speed: print the table as Markdown (docs/formats.md)."),
) -> None:
    """Quantize/dequantize throughput of every format vs its reference and a plain copy; or, with --quality,
    SQNR against bits per weight on Gaussian and on the reference model's weights."""
    from quantlab.bench import formats as bench

    with _status("benchmarking", as_json) as status:
        progress = (lambda name: status.update(f"benchmarking {name}")) if status is not None else None
        result = bench.rate_distortion(progress) if quality else bench.time_formats(size, repeats, progress)
    if quality and plot is not None:
        from quantlab.bench.plots import plot_rate_distortion

        plot_rate_distortion(result, plot)
    if as_json:
        return _print_json(result)
    if markdown and not quality:
        return print(bench.speed_markdown(result))
    rows = result["formats"]
    if quality:
        table = Table("format", "bits/w", "SQNR gauss dB", "6.02·R dB", "model bits/w", "SQNR model dB",
                      title=f"Rate-distortion: Gaussian {result['gaussian']}, reference model ({result['model_values']:,} weights)")
        for r in rows:
            if "skipped" in r:
                table.add_row(r["format"], "skipped: " + r["skipped"][:60], "", "", "", "")
                continue
            table.add_row(r["format"], f"{r['bits_per_weight']:.3f}", f"{r['sqnr_gaussian_db']:.2f}",
                          f"{r['gaussian_bound_db']:.2f}", f"{r['model_bits_per_weight']:.3f}", f"{r['sqnr_model_db']:.2f}")
    else:
        table = Table("format", "quant Mw/s", "dequant Mw/s", "q/copy", "dq/copy", "reference", "q/ref", "dq/ref",
                      "q/ggml 1T", "torch q Mw/s", "torch dq Mw/s",
                      title=f"{result['matrix'][0]}x{result['matrix'][1]} float32, best of {result['repeats']}; copy {result['copy_mw_s']:.0f} Mw/s (into a written buffer: {result['copy_preallocated_mw_s']:.0f})")
        for r in rows:
            if "skipped" in r:
                table.add_row(r["format"], "skipped: " + r["skipped"][:60], *[""] * 10)
                continue
            fmt = lambda key, suffix="": f"{r[key]}{suffix}" if key in r else ""  # noqa: E731
            table.add_row(r["format"], fmt("quantize_mw_s"), fmt("dequantize_mw_s"), fmt("quantize_vs_copy"),
                          fmt("dequantize_vs_copy"), r.get("reference", ""),
                          fmt("quantize_vs_reference", "x"), fmt("dequantize_vs_reference", "x"),
                          fmt("quantize_vs_ggml_single_thread", "x"), fmt("torch_quantize_mw_s"), fmt("torch_dequantize_mw_s"))
    console.print(table)


@bench_app.command("build-memory")
def bench_build_memory(
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    synthetic: bool = typer.Option(True, help="Also measure a synthetic ~100M-parameter gpt-oss (written to a temp folder)."),
) -> None:
    """Peak memory of quantlab build (mxfp4 experts) against the load-only floor, the model and the output."""
    import tempfile

    from quantlab.bench import memory

    results = []
    with _status("measuring build memory", as_json):
        results.append(memory.measure_build("zoo:tiny-gpt-oss"))
        if synthetic:
            with tempfile.TemporaryDirectory(prefix="quantlab-synthetic-") as folder:
                results.append(memory.measure_build(str(memory.synthetic_model(Path(folder) / "synthetic-gpt-oss-100m"))))
                results[-1]["model"] = "synthetic gpt-oss (hidden 512, 8 layers, 16 experts)"
    if as_json:
        return _print_json(results)
    table = Table("model", "model MB", "largest matrix MB", "packed MB", "load-only peak MB", "build peak MB", "build - load MB", "(build - load) / model")
    for r in results:
        table.add_row(r["model"], f"{r['model_bytes_in_memory'] / 1e6:.1f}", f"{r['largest_matrix_float32_bytes'] / 1e6:.1f}",
                      f"{r['packed_bytes'] / 1e6:.1f}", f"{r['load_only_peak_bytes'] / 1e6:.0f}", f"{r['build_peak_bytes'] / 1e6:.0f}",
                      f"{r['build_over_load_bytes'] / 1e6:.0f}", f"{r['build_over_load_vs_model']:.2f}")
    console.print(table)


@bench_app.command("measure")
def bench_measure(
    variant: str = typer.Argument("mxfp4", help="A built variant (artifact folder or name under --artifacts)."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    tokens: int = typer.Option(16384, "--tokens"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Time of quantlab measure against two plain forward passes (baseline and variant) over the same tokens."""
    import json as json_module

    import torch

    from quantlab.bench.measure_cost import measure_cost
    from quantlab.measure.run import _artifact_folder
    from quantlab.measure.text import evaluation_text
    from quantlab.models.loading import load_model, resolve_model

    folder = _artifact_folder(variant, artifacts)
    manifest = json_module.loads((folder / "manifest.json").read_text())
    with _status("timing", as_json):
        baseline, tokenizer = load_model(resolve_model(manifest["model"]["source"]), dtype=torch.float32)
        model, _ = load_model(folder / "model", dtype=torch.float32)
        result = measure_cost(baseline, model, evaluation_text(tokenizer, max_tokens=tokens))
    if as_json:
        return _print_json(result)
    console.print(f"{result['tokens']:,} tokens: two plain forward passes {result['two_forward_passes_s']:.2f} s, "
                  f"quantlab measure {result['measure_s']:.2f} s: ratio {result['ratio']:.2f} (best of {result['repeats']})")


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


def main() -> None:
    """Entry point: runs the app, turning usage mistakes and ``UserError`` into one line and exit code 2."""
    _quiet_third_party_import_noise()
    command = typer.main.get_command(app)
    try:
        command.main(prog_name="quantlab", standalone_mode=False)
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
