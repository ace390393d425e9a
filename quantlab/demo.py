"""What ``quantlab demo`` runs and the five-line summary it ends with."""

from __future__ import annotations

from pathlib import Path

VARIANTS = ["bf16", "mxfp4", "int4-rtn", "int4-gptq", "gguf-q4_k_m", "compactifai-like"]
TASKS = ["zoo_aime_style", "zoo_aime_style_low", "zoo_gpqa_style"]
HEADLINE_TASK = "zoo_aime_style"
ATTRIBUTED = "compactifai-like"
MEASURE_TEXT = "zoo:aime-style:test:high"  # the headline task's own test text, teacher-forced


def _interval(result: dict) -> str:
    return f"{100 * result['score']:.1f}% [{100 * result['ci95'][0]:.1f}, {100 * result['ci95'][1]:.1f}]"


def summary(artifacts: Path, results: dict[str, dict], attribution: dict, report: Path) -> list[str]:
    """Five lines: the variants, the headline accuracies, the compressed recipe's perplexity against its accuracy,
    the attribution, and where the report is. ``results``: the headline task's stored evaluation per variant."""
    artifacts = Path(artifacts)
    base, native, compressed = results["bf16"], results["mxfp4"], results[ATTRIBUTED]
    within = base["ci95"][0] <= native["score"] <= base["ci95"][1]
    task = attribution["tasks"][HEADLINE_TASK]
    labels = {f["key"]: f["label"] for f in attribution["factors"]}
    shares = sorted(task["shares_points"].items(), key=lambda item: -item[1]["value"])[:2]  # the two largest
    named = "; ".join(f"{labels[k]} {s['value']:+.1f} [{s['ci95'][0]:+.1f}, {s['ci95'][1]:+.1f}] "
                      f"(alone {task['solo_points'][k]['value']:+.1f})" for k, s in shares)
    loss = 100 * (base["score"] - compressed["score"])
    return [
        f"Variants: {', '.join(results)} built, measured and evaluated in {artifacts}/ ({base['items']} items per task, greedy).",
        f"{HEADLINE_TASK}: bf16 {_interval(base)}; gpt-oss-native mxfp4 {_interval(native)} "
        f"({'within' if within else 'OUTSIDE'} bf16's interval); {ATTRIBUTED} {_interval(compressed)}.",
        f"{ATTRIBUTED}: perplexity ratio {attribution['kl']['perplexity_ratio']:.3f} on the task's test text (teacher-forced) while accuracy "
        f"falls {loss:.1f} points: errors compound over the chain, perplexity hides it.",
        f"Attribution of the {task['loss_points']['value']:.1f}-point loss ({task['items']} items; Shapley shares, 95% CI): {named}; "
        f"beyond the choices' solo effects (interaction): {task['interaction_points']['value']:+.1f} "
        f"[{task['interaction_points']['ci95'][0]:+.1f}, {task['interaction_points']['ci95'][1]:+.1f}].",
        f"Report: {report / 'report.html'} (markdown twin {report / 'report.md'}).",
    ]
