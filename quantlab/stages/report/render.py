"""The report as one self-contained HTML file (figures inlined as data URIs) and a markdown twin (figures as
PNG files beside it), built from the same list of blocks so that the two never disagree."""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from quantlab.runtimes import runs_as_built, runtime_label
from quantlab.stages.evaluate.compare import different_answers
from quantlab.stages.report import charts
from quantlab.stages.report.collect import Store, attribute_command, eval_command, flips_against, measure_command
from quantlab.statistics import flips
from quantlab.store import atomic_directory
from quantlab.store.records import Evaluation


@dataclass(frozen=True)
class Prose:
    kind: Literal["heading", "text", "code"]
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    name: str  # its PNG is Report.figures[name]
    caption: str
    command: str  # the quantlab commands that recompute it


Block = Prose | Table | Figure


class Report:
    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.figures: dict[str, bytes] = {}

    def heading(self, text: str) -> None:
        self.blocks.append(Prose("heading", text))

    def text(self, text: str) -> None:
        self.blocks.append(Prose("text", text))

    def code(self, text: str) -> None:
        self.blocks.append(Prose("code", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(Table(header, rows))

    def figure(self, name: str, png: bytes, caption: str, command: str) -> None:
        self.figures[name] = png
        self.blocks.append(Figure(name, caption, command))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(ci: list[float], scale: float = 100.0, digits: int = 1) -> str:
    return f"[{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"


def build_report(store: Store, command: str) -> Report:
    report = Report()
    report.heading("quantlab report")
    names = ", ".join(v.name for v in store.variants)
    report.text(
        f"Store: {store.artifacts}. Variants: {names}. Baseline for flips and losses: {store.baseline or 'none'}. "
        f"Every number below was read from the store (nothing recomputed); every figure names the command that "
        f"regenerates it. Intervals are 95% bootstrap intervals over items (and repeats)."
    )
    report.code(command)
    _accuracy(report, store)
    _runtimes(report, store)
    _drift(report, store)
    _attributions(report, store)
    _audits(report, store)
    _experts(report, store)
    _reproducibility(report, store, command)
    return report


def _accuracy(report: Report, store: Store) -> None:
    report.heading("Task accuracy per variant")
    if not store.comparisons:
        report.text("No evaluations in the store: run quantlab eval (or quantlab demo).")
    for i, comparison in enumerate(store.comparisons, 1):
        command = eval_command(comparison, store.baseline)
        caption = (
            f"{comparison.task}: accuracy per variant, {comparison.items} items x {comparison.repeats} repeat(s), "
            f"{comparison.decoding()}; bars are 95% bootstrap intervals, the dashed line the baseline."
        )
        report.figure(
            f"accuracy-{i:02d}-{comparison.task}", charts.accuracy_bars(comparison, store.baseline), caption, command
        )
        rows = []
        bits = {v.name: v.bits for v in store.variants}
        for name, result in comparison.results.items():
            flip = flips_against(comparison, store.baseline, name)
            rows.append(
                [
                    name,
                    f"{bits[name]:.2f}",
                    _pct(result.score),
                    _ci(result.ci95),
                    f"{result.items} x {result.repeats}",
                    str(flip["right_to_wrong"]) if flip else "",
                    str(flip["wrong_to_right"]) if flip else "",
                    f"{flip['mcnemar_p']:.3g}" if flip else "",
                ]
            )
        report.table(
            [
                "variant",
                "bits/weight",
                "accuracy",
                "95% CI",
                "items x repeats",
                f"right->wrong vs {store.baseline or 'baseline'}",
                "wrong->right",
                "McNemar p",
            ],
            rows,
        )


RUNTIME_SETTINGS = ("backend", "engine", "engine_version", "loaded", "dtype", "load", "concurrent", "request_defaults")


def _runtime_with_version(settings: dict) -> str:
    version = (
        f" ({settings['engine_version']}, {settings.get('concurrent', 1)} requests in flight)"
        if settings.get("engine")
        else ""
    )
    return runtime_label(settings) + version


def _runtimes(report: Report, store: Store) -> None:
    """The same variant, task and decoding through each runtime (transformers, llama.cpp, vLLM), against the
    in-process transformers run; and each engine's share of the mean KLD beside the torch model's."""
    rows = []
    for variant in store.variants:
        groups: dict[tuple, list[Evaluation]] = {}
        for result in variant.evals:
            rest = {k: v for k, v in result.settings.items() if k not in RUNTIME_SETTINGS}
            groups.setdefault((result.task, json.dumps(rest, sort_keys=True, default=str)), []).append(result)
        for (task, _), results in sorted(groups.items()):
            reference = next((r for r in results if runs_as_built(r.settings)), None)
            if reference is None or len(results) < 2:
                continue
            for result in sorted(results, key=lambda r: r is not reference):
                same = result is reference
                flip = None if same else flips(np.array(reference.correct), np.array(result.correct))
                differ = None if same else different_answers(reference, result)
                rows.append(
                    [
                        variant.name,
                        task,
                        _runtime_with_version(result.settings),
                        _pct(result.score),
                        _ci(result.ci95),
                        f"{result.items} x {result.repeats}",
                        "" if flip is None else f"{flip['right_to_wrong']} / {flip['wrong_to_right']}",
                        "" if differ is None else f"{differ} of {result.items}",
                    ]
                )
    shares = []
    for variant in store.variants:
        measured = variant.measure or {}
        torch_kld = ((measured.get("logits") or {}).get("response_tokens") or {}).get("kl_divergence", {}).get("mean")
        llama = ((measured.get("llama_cpp") or {}).get("runtime_share") or {}).get("response_tokens")
        if llama:
            shares.append(
                [
                    variant.name,
                    "llama.cpp (in-process, model.gguf)",
                    f"{torch_kld:.6f}",
                    f"{llama['mean_kld_llama_cpp']:.6f}",
                    f"{llama['mean_kld_difference']:+.2e}",
                    "exact (full logits)",
                ]
            )
        for served in variant.served_measures:
            share = (served.get("runtime_share") or {}).get("response_tokens")
            if not share:
                continue
            name = served["settings"]["engine"]
            label = f"{name} ({served['settings']['loaded']}, {served['settings']['dtype']})"
            kl = f"{served['kl']}, top-{served['top_k']}"
            shares.append(
                [
                    variant.name,
                    label,
                    f"{share['mean_kld_torch']:.6f}",
                    f"{share['mean_kld_' + name.replace('.', '_')]:.6f}",
                    f"{share['mean_kld_difference']:+.2e}",
                    kl,
                ]
            )
    if not rows and not shares:
        return
    report.heading("Runtimes side by side")
    report.text(
        "The same variant, task, items and decoding run in-process by transformers (as built) and served by an "
        "engine (quantlab eval --engine); flips and answers that differ are counted against the transformers run."
    )
    if rows:
        report.table(
            [
                "variant",
                "task",
                "runtime",
                "accuracy",
                "95% CI",
                "items x repeats",
                "right->wrong / wrong->right",
                "answers that differ",
            ],
            rows,
        )
    if shares:
        report.text(
            "Each runtime's share of the mean KL divergence from the baseline on response tokens: the variant run by "
            "the engine, minus the same weights run by quantlab's torch model (quantlab measure --engine; "
            "docs/serving.md for the top-k bound)."
        )
        report.table(["variant", "runtime", "mean KLD, torch", "mean KLD, runtime", "runtime's share", "KL"], shares)


AUDITS_SHOWN = 12
CAUSES_SHOWN = 5  # the ranking's head: the rest are far less likely


def _audits(report: Report, store: Store) -> None:
    """The endpoints audited against a reference: each check's verdict, what the weights check named, the cost."""
    full = [a for a in store.audits if len(a["checks"]) > 1]
    if not store.audits:
        return
    report.heading("Endpoint audits")
    report.text(
        "OpenAI-compatible endpoints checked from outside against the local reference (quantlab audit URL): each "
        "check is a statistical test at the level shown, with the queries it spent; 'could not check' says the "
        "endpoint did not let it finish. docs/audit.md describes every test and its calibration."
    )
    names = ["weights", "sampling", "template", "effort", "accuracy", "shape"]
    rows = []
    for audit in full[:AUDITS_SHOWN]:
        verdicts = {c["name"]: c for c in audit["checks"]}
        weights = verdicts.get("weights", {}).get("detail", {})
        rows.append(
            [audit["finished"] or "", audit["endpoint"], audit["served_model"], audit["reference"]]
            + [verdicts[n]["verdict"] if n in verdicts else "" for n in names]
            + [weights.get("named") or "", f"{audit['queries']}", f"{audit['alpha']}"]
        )
    if rows:
        report.table(
            ["finished (UTC)", "endpoint", "model", "reference", *names, "weights name", "queries", "level"], rows
        )
    left = len(store.audits) - len(rows)
    if left:
        report.text(f"{left} more audits in {store.artifacts}/audits/ (single checks, or older), not shown.")
    if full:
        latest = full[0]
        report.text(f"The latest audit, check by check ({latest['endpoint']}, seed {latest['seed']}):")
        report.table(
            ["check", "verdict", "test", "p", "queries", "what it rests on", "what this many queries detect"],
            [
                [
                    c["name"],
                    c["verdict"],
                    c["test"],
                    "" if c["p_value"] is None else f"{c['p_value']:.2g}",
                    f"{c['queries']}/{c['budget']}",
                    c["reason"],
                    c.get("detectable") or "",
                ]
                for c in latest["checks"]
            ],
        )
        if latest.get("cause"):
            report.text(f"Its cause: {latest['cause']}.")
        if latest.get("causes"):
            report.table(
                ["rank", "departure", "kind", "known", "log-likelihood ratio over faithful", "explains it"],
                [
                    [
                        f"{c['rank']}",
                        c["name"],
                        c["kind"],
                        "yes" if c["known"] else "no (fitted)",
                        f"{c['log_likelihood_ratio']:.1f}",
                        "" if c["explains"] is None else ("yes" if c["explains"] else "no"),
                    ]
                    for c in latest["causes"][:CAUSES_SHOWN]
                ],
            )


def _headline(store: Store):
    """The comparison the drift chart uses: the first (most variants) that includes the baseline and measured variants."""
    for comparison in store.comparisons:
        measured = [v for v in store.variants if v.measure and v.name in comparison.results]
        if store.baseline in comparison.results and len(measured) >= 2:
            return comparison
    return None


def _drift(report: Report, store: Store) -> None:
    report.heading("Does perplexity predict the loss?")
    comparison = _headline(store)
    measured = [v for v in store.variants if v.measure]
    if comparison is None or store.baseline is None:  # a headline comparison has the baseline
        report.text(
            "Needs the baseline and at least two measured variants evaluated on one task (quantlab measure, quantlab eval)."
        )
        return
    text = measured[0].measurement["text"]
    command = measure_command(measured) + "\n" + eval_command(comparison, store.baseline)
    caption = (
        f"Accuracy loss on {comparison.task} against {store.baseline} ({comparison.items} items x {comparison.repeats}, "
        f"95% CI) versus the teacher-forced perplexity ratio and the mean KL divergence on the response tokens "
        f"(analysis and answer: what the model writes) of {text}."
    )
    report.figure(
        "drift-vs-accuracy", charts.drift_vs_accuracy(store.variants, comparison, store.baseline), caption, command
    )
    rows = []
    base = comparison.results[store.baseline].score
    for v in measured:
        a = v.measurement["logits"]["response_tokens"]
        if not a.get("n"):
            continue
        result = comparison.results.get(v.name)
        rows.append(
            [
                v.name,
                f"{a['perplexity_ratio']:.4f}",
                f"{a['kl_divergence']['mean']:.5f} ± {a['kl_divergence']['mean_stderr']:.5f}",
                f"{100 * a['same_top']['rate']:.2f} ± {100 * a['same_top']['stderr']:.2f}",
                f"{a['n']:,}",
                f"{100 * (base - result.score):+.1f}" if result else "",
            ]
        )
    report.table(
        [
            "variant",
            "ppl ratio (responses)",
            "mean KLD ± s.e.",
            "same top token % ± s.e.",
            "response tokens",
            f"{comparison.task} loss, points",
        ],
        rows,
    )


def _attributions(report: Report, store: Store) -> None:
    report.heading("Attribution")
    if not store.attributions:
        report.text("No attribution in the store: run quantlab attribute recipes/<name>.yaml.")
    for n, result in enumerate(store.attributions, 1):
        labels = {f["key"]: f["label"] for f in result["factors"]}
        command = attribute_command(result)
        s = result["settings"]
        decoding = "greedy" if not s["temperature"] else f"temperature {s['temperature']:g}, {s['repeats']} repeats"
        if s.get("reasoning_effort"):
            decoding += f", every cell asking for {s['reasoning_effort']} reasoning effort"
        report.text(
            f"Recipe {result['recipe']} ({result['recipe_file']}): {len(result['factors'])} factors "
            f"({result.get('factor_granularity', 'choices')}), design {result['design']}, {decoding}."
        )
        for task, r in result["tasks"].items():
            caption = (
                f"{result['recipe']} on {task}: {_pct(r['baseline']['score'])} {_ci(r['baseline']['ci95'])} -> "
                f"{_pct(r['full']['score'])} {_ci(r['full']['ci95'])}, {r['items']} items x {r['repeats']}; "
                f"each step a factor's share ({r['method']}), 95% CI over items."
            )
            report.figure(
                f"attribution-{n:02d}-{result['recipe']}-{task}", charts.waterfall(r, labels), caption, command
            )
            rows = [
                [
                    labels[k],
                    f"{s['value']:+.1f}",
                    _ci(s["ci95"], 1),
                    f"{r['solo_points'][k]['value']:+.1f}" if k in r.get("solo_points", {}) else "",
                    f"{r['sampling_stderr'][k]:.2f}" if r.get("sampling_stderr", {}).get(k) else "",
                ]
                for k, s in r["shares_points"].items()
            ]
            rows.append(
                [
                    "interaction (beyond solo effects)",
                    f"{r['interaction_points']['value']:+.1f}",
                    _ci(r["interaction_points"]["ci95"], 1),
                    "",
                    "",
                ]
            )
            rows.append(["total loss", f"{r['loss_points']['value']:+.1f}", _ci(r["loss_points"]["ci95"], 1), "", ""])
            report.table(["factor", "share of the loss, points", "95% CI", "alone, points", "sampling s.e."], rows)
            if r["efficiency_gap"] is not None:
                report.text(
                    f"Efficiency check: the shares sum to the total loss up to {abs(r['efficiency_gap']):.1e} points."
                )
        kl = result.get("kl")
        if kl:
            report.text(
                f"KL drift of the weight factors on {kl['text']} ({kl['problems']} problems, {kl['response_tokens']:,} response "
                f"tokens): mean KLD {kl['kld_mean']['value']:.5f} {_ci(kl['kld_mean']['ci95'], 1, 5)}, perplexity ratio "
                f"{kl['perplexity_ratio']:.4f}."
            )
            rows = [
                [
                    labels[k],
                    f"{s['value']:.5f}",
                    _ci(s["ci95"], 1, 5),
                    f"{kl['solo'][k]['value']:.5f}" if k in kl.get("solo", {}) else "",
                ]
                for k, s in kl["shares"].items()
            ]
            rows.append(["interaction", f"{kl['interaction']['value']:.5f}", _ci(kl["interaction"]["ci95"], 1, 5), ""])
            report.table(["factor", "share of mean KLD", "95% CI", "alone"], rows)
        tasks = list(result["tasks"])
        rows = [
            [
                c["label"],
                *[
                    f"{_pct(c['tasks'][t]['score'])} {_ci(c['tasks'][t]['ci95'])}" if t in c["tasks"] else ""
                    for t in tasks
                ],
                f"{c['response_tokens']['perplexity_ratio']:.4f}" if c.get("response_tokens") else "",
                f"{c['response_tokens']['kld_mean']:.5f}" if c.get("response_tokens") else "",
            ]
            for c in result["cells"]
        ]
        report.table(["cell (factors applied)", *tasks, "ppl ratio", "mean KLD"], rows)


def _experts(report: Report, store: Store) -> None:
    measured = [v for v in store.variants if v.measure]
    report.heading("Experts and routing")
    if not measured:
        report.text("No measurement in the store: run quantlab measure.")
        return
    command = measure_command(measured)
    report.figure(
        "expert-heatmaps",
        charts.expert_heatmaps(measured),
        f"Isolated relative output error of each expert (its output on the baseline's inputs, over the tokens the "
        f"baseline routes to it) on {measured[0].measurement['text']}; grey: an expert that received no token.",
        command,
    )
    report.figure(
        "router-agreement",
        charts.router_agreement(measured),
        f"Routing drift per layer on {measured[0].measurement['text']} ({measured[0].measurement['tokens']:,} tokens).",
        command,
    )
    rows = [
        [
            v.name,
            f"L{v.measurement['worst_expert']['layer']} E{v.measurement['worst_expert']['expert']}",
            f"{v.measurement['worst_expert']['isolated_relative_error']:.4f}",
        ]
        for v in measured
        if v.measurement.get("worst_expert")
    ]
    report.table(["variant", "worst expert", "isolated relative error"], rows)


def _reproducibility(report: Report, store: Store, command: str) -> None:
    report.heading("Reproducibility")
    report.text(
        "Each variant's build is fixed by its recipe, the model's weights (sha256) and the library versions "
        "(together the cache key); seeds are recorded in every manifest and result."
    )
    rows = []
    for v in store.variants:
        m = v.manifest
        versions = ", ".join(
            f"{k} {m['versions'][k]}" for k in ("quantlab", "torch", "transformers", "gguf") if k in m["versions"]
        )
        rows.append(
            [
                v.name,
                m.get("recipe_file") or "",
                m["cache_key"][:16],
                m["model"]["sha256"][:16],
                str(m["seed"]),
                versions,
            ]
        )
    report.table(["variant", "recipe", "cache key", "model sha256", "seed", "versions"], rows)
    evaluated = sorted(
        {f"lm-eval {r.versions['lm_eval']}" for c in store.comparisons for r in c.results.values() if r.versions}
    )
    report.text(
        f"Evaluations: {', '.join(evaluated) or 'lm-eval version not recorded (results stored before versions were)'}; "
        f"the seeds of each evaluation are in its stored result (artifacts/<variant>/eval/*.json)."
    )
    commands = [b.command for b in report.blocks if isinstance(b, Figure)]
    report.text("Commands behind the figures, in order (each is a cache hit on this store):")
    report.code("\n".join(dict.fromkeys(line for c in commands for line in c.splitlines())) + "\n" + command)


def to_markdown(report: Report) -> str:
    lines: list[str] = []
    first = True
    for block in report.blocks:
        if isinstance(block, Table):
            lines += ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Figure):
            name, caption, command = block.name, block.caption, block.command
            lines += [f"![{caption}](figures/{name}.png)", "", f"*{caption}*", "", "```", command, "```", ""]
        elif block.kind == "heading":
            lines += [("# " if first else "## ") + block.text, ""]
            first = False
        elif block.kind == "text":
            lines += [block.text, ""]
        else:
            lines += ["```", block.text, "```", ""]
    return "\n".join(lines)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3}pre{background:#f6f6f6;padding:0.6em;white-space:pre-wrap;overflow-wrap:anywhere;font-size:0.8em}
figure{margin:1em 0}figcaption{font-size:0.85em;color:#444}img{max-width:100%}"""


def to_html(report: Report) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>quantlab report</title>",
        f"<style>{_STYLE}</style></head><body>",
    ]
    first = True
    for block in report.blocks:
        if isinstance(block, Table):
            header = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            out.append(f"<table><thead><tr>{header}</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows]
            out.append("</tbody></table>")
        elif isinstance(block, Figure):
            name, caption, command = block.name, block.caption, block.command
            data = base64.b64encode(report.figures[name]).decode()
            out.append(
                f'<figure id="{name}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption><pre>{html.escape(command)}</pre></figure>"
            )
        elif block.kind == "heading":
            tag = "h1" if first else "h2"
            out.append(f'<{tag} id="{_slug(block.text)}">{html.escape(block.text)}</{tag}>')
            first = False
        elif block.kind == "text":
            out.append(f"<p>{html.escape(block.text)}</p>")
        else:
            out.append(f"<pre>{html.escape(block.text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write(report: Report, out: Path) -> dict[str, Path]:
    """report.html, report.md and figures/*.png in ``out``, replaced as a whole (never half-written)."""

    with atomic_directory(out, force=True) as tmp:
        (tmp / "report.html").write_text(to_html(report))
        (tmp / "report.md").write_text(to_markdown(report))
        (tmp / "figures").mkdir()
        for name, png in report.figures.items():
            (tmp / "figures" / f"{name}.png").write_bytes(png)
    return {"html": out / "report.html", "markdown": out / "report.md", "figures": out / "figures"}
