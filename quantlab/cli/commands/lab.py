"""``quantlab report`` and ``quantlab demo``: the store written up, and the lab end to end on the embedded default."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from quantlab import pipeline
from quantlab.cli import render
from quantlab.cli.render import console
from quantlab.pipeline import run_demo, summary
from quantlab.plugins import registry
from quantlab.stages.report import write_report


def report_command(
    variants: list[str] = typer.Argument(None, help="Variants to show (default: every variant built in --artifacts)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for report.html, report.md and figures/ (default: report/ in --artifacts)."
    ),
    baseline: str = typer.Option("bf16", "--baseline", help="The variant losses and flips are measured against."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", help="The store to read (nothing is recomputed)."),
) -> None:
    """Write a self-contained HTML report and its markdown twin from stored results (never recomputing)."""
    out = out or artifacts / "report"  # beside the store it reads, not the default store's
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


def demo(
    count: int = typer.Option(500, min=1, help="Test items per task in the evaluation (and in the attribution)."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", help="Where the variants and results go."),
) -> None:
    """The lab end to end on the embedded default: build the shipped recipes, measure them against the baseline,
    evaluate them against bf16, attribute the compactifai-like recipe's loss, write the report (every step
    cached in artifacts/; a second run is fast)."""
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
    spinner.stop()
    if stage == "build":
        console.print(f"\n[bold]1. Build[/bold] {len(run.builds)} variants from {run.recipes}/")
        for result in run.builds:
            summary = result.manifest.plan
            state = "cached" if result.cache_hit else f"built in {result.manifest.run['seconds']['total']:.1f} s"
            console.print(
                f"  {result.manifest.variant:17s} {summary.average_bits_per_weight:6.3f} bits/weight  {state}: {result.path}"
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
