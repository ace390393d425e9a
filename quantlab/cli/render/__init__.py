"""Everything the CLI prints: rich tables and lines for each command's result (one package, so that a field
rename in a stage's record is followed in one place); the benchmarks' tables are in ``quantlab.cli.render.bench``."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from quantlab.recipe import _ranges
from quantlab.runtimes import runtime_label
from quantlab.store.records import Attribution, Measurement, Sweep

if TYPE_CHECKING:  # the rows' module runs lm-eval; printing them needs only their fields
    from quantlab.stages.evaluate.compare import TaskScore

console = Console()


def status(message: str, quiet: bool):
    """A spinner on the terminal, or nothing when the output is JSON."""
    return contextlib.nullcontext() if quiet else console.status(message)


def print_json(payload) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def wide() -> Console:
    """A console that never wraps long tensor and variant names."""
    return Console(width=max(console.width, 160))


def model_card(card: dict) -> None:
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
    reference_scores(card.get("scores") or {})


def reference_scores(scores: dict) -> None:
    if not scores or "rows" not in scores:
        console.print("scores: none recorded (run `quantlab zoo score --record`)")
        return
    table = Table(
        "task", "reasoning effort", "chat template", "score", "95% CI", "n",
        title=f"Scores ({scores['split']} split, {scores['decoding']})", title_justify="left",
    )  # fmt: skip
    for row in scores["rows"]:
        low, high = row["ci95"]
        table.add_row(
            row["task"], row["effort"], row["template"], f"{100 * row['score']:.1f}%",
            f"{100 * low:.1f}–{100 * high:.1f}%", str(row["n"]),
        )  # fmt: skip
    console.print(table)
    same = "yes" if scores.get("default_equals_medium") else "NO"
    console.print(f"no effort asked = medium, item for item: {same}")


def build_result(result) -> None:
    summary = result.manifest.plan
    size_mb = result.manifest.sizes["planned_size_bytes"] / 1e6
    what = "cache hit (same recipe, model and library versions; --force rebuilds)" if result.cache_hit else "built"
    seconds = "" if result.cache_hit else f" in {result.manifest.run['seconds']['total']:.1f} s"
    console.print(
        f"{what}: {result.path}  ({summary.quantized_weights:,} of {summary.weights:,} weights quantized, "
        f"{summary.average_bits_per_weight:.3f} bits/weight, {size_mb:.2f} MB){seconds}"
    )


def plan_json(plan) -> dict:
    entries = [
        {
            "name": e.unit.name,
            "component": e.unit.component,
            "layer": e.unit.layer,
            "expert": e.unit.expert,
            "shape": list(e.unit.shape),
            "format": e.format_name,
            "method": e.method,
            "bits_per_weight": round(e.bits_per_weight, 4),
            "why": e.why,
            "fallback": e.fallback,
        }
        for e in plan.entries
    ]
    return {"recipe": plan.recipe.resolved(), "summary": plan.summary(), "tensors": entries}


def plan_table(plan) -> None:
    """One row per tensor; the experts of a fused tensor that share a spec collapse into one row ``[0-7]``."""
    table = Table(
        "tensor",
        "shape",
        "format",
        "method",
        "bits/w",
        "decided by",
        title=f"plan: {plan.recipe.name} on {plan.recipe.model}",
    )
    rows: list[list] = []
    for e in plan.entries:
        spec = (
            e.unit.tensor,
            e.unit.shape,
            e.format_name + (" (fallback)" if e.fallback else ""),
            e.method,
            f"{e.bits_per_weight:.3f}",
            e.why,
        )
        if rows and rows[-1][0] == spec and e.unit.expert is not None and e.unit.transposed == rows[-1][2]:
            rows[-1][1].append(e.unit.expert)
        else:
            rows.append(
                [
                    spec,
                    [] if e.unit.expert is None or e.unit.name == e.unit.tensor else [e.unit.expert],
                    e.unit.transposed,
                ]
            )
    for (tensor, shape, fmt, method, bits, why), experts, _ in rows:
        name = tensor + (f"[{_ranges(tuple(experts))}]" if experts else "")
        table.add_row(name, "x".join(map(str, shape)), fmt, method, bits, why)
    wide().print(table)  # tensor names are long: never wrap them
    s = plan.summary()
    console.print(
        f"{s['quantized_weights']:,} of {s['weights']:,} weights quantized; model size {s['size_bytes'] / 1e6:.3f} MB "
        f"({s['average_bits_per_weight']:.3f} bits/weight on average; the model stores {s['baseline_bits_per_weight']})"
    )


def measurement_json(result: Measurement) -> dict:
    """What ``quantlab measure --json`` prints of one measurement: the record, the served engine's part beside it."""
    served = {"engine": result.engine} if result.engine else {}
    return result.to_dict() | served | ({"cache_hit": True} if result.cache_hit else {})


def measurements(results: list[Measurement], artifacts: Path, markdown: bool = False) -> None:
    headers = (
        "variant",
        "bits/w",
        "ppl ratio (all)",
        "ppl ratio (responses)",
        "mean KLD (analysis)",
        "mean KLD (answers)",
        "same top % (answers)",
        "top-1 router flip %",
        "worst expert (isolated err)",
    )
    first = results[0]
    title = (
        f"against {first.baseline}: {first.tokens:,} tokens of {first.text} "
        f"({first.response_tokens:,} predicted response tokens: {first.analysis_tokens:,} of "
        f"the analysis channel, {first.answer_tokens:,} of answers)"
    )
    table = Table(*headers, title=title)
    for r in results:
        whole, answers = r.logits["all_tokens"], r.logits["answer_tokens"]
        responses, analysis = r.logits.get("response_tokens", {}), r.logits.get("analysis_tokens", {})
        flips = [layer["router"]["top1_flip_rate"] for layer in r.layers]
        worst = r.worst_expert
        table.add_row(
            r.variant,
            f"{r.bits_per_weight:.3f}",
            f"{whole['perplexity_ratio']:.4f}",
            f"{responses['perplexity_ratio']:.4f}" if responses.get("n") else "",
            f"{analysis['kl_divergence']['mean']:.5f}" if analysis.get("n") else "",
            f"{answers['kl_divergence']['mean']:.5f} ± {answers['kl_divergence']['mean_stderr']:.5f}"
            if answers.get("n")
            else "",
            f"{100 * answers['same_top']['rate']:.2f} ± {100 * answers['same_top']['stderr']:.2f}"
            if answers.get("n")
            else "",
            f"{100 * sum(flips) / len(flips):.2f}" if flips else "",
            f"L{worst['layer']} E{worst['expert']}: {worst['isolated_relative_error']:.3f}" if worst else "",
        )
    if markdown:
        lines = [f"| {' | '.join(headers)} |", "|---" * len(headers) + "|"]
        lines += [f"| {' | '.join(str(c) for c in row)} |" for row in zip(*(col._cells for col in table.columns))]
        return print(title + "\n\n" + "\n".join(lines))
    wide().print(table)
    for r in results:
        share = (r.llama_cpp or {}).get("runtime_share", {}).get("response_tokens")
        if share:
            console.print(
                f"{r.variant}: mean KLD on responses, quantlab's torch model {share['mean_kld_torch']:.5f}, "
                f"llama.cpp on model.gguf {share['mean_kld_llama_cpp']:.5f}: runtime's share {share['mean_kld_difference']:+.5f}"
            )
        served = r.engine
        if served and served["runtime_share"].get("response_tokens"):
            share, name = served["runtime_share"]["response_tokens"], served["settings"]["engine"]
            console.print(
                f"{r.variant}: mean KLD on responses, quantlab's torch model {share['mean_kld_torch']:.5f}, "
                f"{name} ({served['settings']['engine_version']}, {served['settings']['loaded']}, dtype "
                f"{served['settings']['dtype']}, top-{served['top_k']}: KL {served['kl']}) "
                f"{share['mean_kld_' + name.replace('.', '_')]:.5f}: engine's share {share['mean_kld_difference']:+.2e}",
                highlight=False,
            )
    console.print(f"written: {', '.join(str(Path(artifacts) / r.variant / 'measure') for r in results)}")


def evaluations(rows: list[TaskScore], temperature: float, top_p: float, baseline: str | None) -> None:
    table = Table(
        "subject",
        "runtime",
        "task",
        "score",
        "95% CI",
        "items x repeats",
        "right->wrong",
        "wrong->right",
        "McNemar p",
        "answers differ",
        "cached",
        title=f"lm-eval, {'greedy' if temperature == 0 else f'temperature {temperature}, top-p {top_p}'}"
        + (f"; flips against {', '.join(dict.fromkeys(str(r.against) for r in rows))}" if baseline else ""),
    )
    for r in rows:
        f = r.flips or {}
        table.add_row(
            r.subject,
            runtime_label(r.settings),
            r.task,
            f"{r.score:.3f}",
            f"{r.ci95[0]:.3f}-{r.ci95[1]:.3f}",
            f"{r.items} x {r.repeats}",
            str(f.get("right_to_wrong", "")),
            str(f.get("wrong_to_right", "")),
            f"{f['mcnemar_p']:.3g}" if f else "",
            "" if r.different_answers is None else str(r.different_answers),
            "yes" if r.cache_hit else "",
        )
    wide().print(table)


def attribution(result: Attribution) -> None:
    labels = {f.key: f.label for f in result.factors}
    for task, r in result.tasks.items():
        sampled = bool(r.get("sampling_stderr")) and any(r["sampling_stderr"].values())
        table = Table(
            "factor",
            "share of the loss (points)",
            "95% CI",
            "alone (points)",
            *(["sampling s.e."] if sampled else []),
            title=f"{result.recipe} on {task}: {100 * r['baseline']['score']:.1f}% -> {100 * r['full']['score']:.1f}% "
            f"({r['items']} items x {r['repeats']}; {r['method']})",
        )
        for key, share in r["shares_points"].items():
            solo = r.get("solo_points", {}).get(key)
            table.add_row(
                labels[key],
                f"{share['value']:+.1f}",
                f"{share['ci95'][0]:+.1f} .. {share['ci95'][1]:+.1f}",
                f"{solo['value']:+.1f}" if solo else "",
                *([f"{r['sampling_stderr'][key]:.2f}"] if sampled else []),
            )
        table.add_row(
            "interaction (beyond solo effects)",
            f"{r['interaction_points']['value']:+.1f}",
            f"{r['interaction_points']['ci95'][0]:+.1f} .. {r['interaction_points']['ci95'][1]:+.1f}",
            "",
            *([""] if sampled else []),
        )
        table.add_row(
            "[bold]total loss[/bold]",
            f"{r['loss_points']['value']:+.1f}",
            f"{r['loss_points']['ci95'][0]:+.1f} .. {r['loss_points']['ci95'][1]:+.1f}",
            "",
            *([""] if sampled else []),
        )
        console.print(table)
        if r["efficiency_gap"] is not None:
            console.print(f"efficiency: shares sum to the total loss (gap {r['efficiency_gap']:.2e} points)")
    kl = result.kl
    if kl:
        table = Table(
            "factor",
            "share of mean KLD",
            "95% CI",
            title=f"KL drift on {kl['text']} ({kl['problems']} problems, {kl['response_tokens']:,} response tokens): "
            f"mean KLD {kl['kld_mean']['value']:.5f}, perplexity ratio {kl['perplexity_ratio']:.4f}",
        )
        for key, share in kl["shares"].items():
            table.add_row(labels[key], f"{share['value']:.5f}", f"{share['ci95'][0]:.5f} .. {share['ci95'][1]:.5f}")
        table.add_row(
            "interaction",
            f"{kl['interaction']['value']:.5f}",
            f"{kl['interaction']['ci95'][0]:.5f} .. {kl['interaction']['ci95'][1]:.5f}",
        )
        console.print(table)


VERDICT_STYLE = {"pass": "green", "fail": "bold red", "could not check": "yellow", "not applicable": "dim"}


CAUSES_SHOWN = 5  # the ranking's head: the rest are far less likely


def audit(record) -> None:
    """An audit: one row per check, its verdict, test outcome and cost; the weights check's candidates."""
    table = Table(
        title=f"audit of {record.endpoint} (model {record.served_model!r}) against "
        + (
            f"the trusted endpoint {record.reference_endpoint} ({record.reference_queries} queries to it)"
            if record.reference_endpoint
            else record.reference
        )
        + f": {record.queries} queries, {record.seconds:.0f} s, level {record.alpha}"
        + (
            f" (each test at {record.check_alpha:.2g})"
            if record.check_alpha is not None and record.check_alpha != record.alpha
            else ""
        ),
        title_justify="left",
    )
    for column in ("check", "verdict", "statistic", "p", "queries", "what it rests on"):
        table.add_column(column, overflow="fold")
    for check in record.checks:
        style = VERDICT_STYLE.get(check.verdict, "")
        statistic = "" if check.statistic is None else f"{check.statistic:.3g}"
        if check.interval:
            statistic += f" [{check.interval[0]:.3g}, {check.interval[1]:.3g}]"
        table.add_row(
            check.name,
            f"[{style}]{check.verdict}[/{style}]",
            statistic,
            "" if check.p_value is None else f"{check.p_value:.2g}",
            f"{check.queries}/{check.budget}",
            check.reason,
        )
    wide().print(table)
    weights = next((c for c in record.checks if c.name == "weights" and "candidates" in c.detail), None)
    if weights is not None:
        rows = weights.detail["candidates"]
        named = weights.detail.get("named")
        line = ", ".join(
            f"{name} {row.get('mean_kl', row.get('mmd2', 0)):.2e}"
            for name, row in sorted(rows.items(), key=lambda item: item[1].get("mean_kl", item[1].get("mmd2", 0)))
        )
        console.print(
            f"weights: {'names ' + named if named else 'no candidate explains the endpoint'} "
            f"({'mean KL per token' if 'mean_kl' in next(iter(rows.values())) else 'MMD²'}: {line})",
            highlight=False,
        )
    if record.causes:
        causes = Table(title="the departures, most likely first", title_justify="left")
        for column in ("rank", "departure", "kind", "log-likelihood ratio over faithful", "explains it"):
            causes.add_column(column, overflow="fold")
        for cause in record.causes[:CAUSES_SHOWN]:
            explains = "" if cause.explains is None else ("yes" if cause.explains else "no")
            causes.add_row(
                str(cause.rank),
                cause.name + ("" if cause.known else " (fitted)"),
                cause.kind,
                f"{cause.log_likelihood_ratio:.1f}",
                explains,
            )
        wide().print(causes)
    if record.cause:
        console.print(f"cause: {record.cause}", highlight=False)


def sweep(result: Sweep) -> None:
    """``quantlab sweep``: one row per point: its settings, bits per weight, mean KLD and scores with intervals."""
    tasks = result.tasks
    table = Table("point", "settings", "bits/w", "mean KLD ± s.e. (n tokens)", *tasks, title=f"sweep of {result.name}")
    for point in result.points:
        scores = [
            f"{100 * t['score']:.1f}% [{100 * t['ci95'][0]:.1f}, {100 * t['ci95'][1]:.1f}] (n={t['items']})"
            for t in (point["tasks"][task] for task in tasks)
        ]
        settings = ", ".join(f"{k}={v}" for k, v in point["settings"].items()) or "(as written)"
        table.add_row(
            point["variant"],
            settings,
            f"{point['bits_per_weight']:.3f}",
            f"{point['kld_mean']:.5f} ± {point['kld_stderr']:.5f} ({point['kld_n']})",
            *scores,
        )
    wide().print(table)
