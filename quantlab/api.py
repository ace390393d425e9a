"""The public API, one function per stage; ``import quantlab`` loads this module on first use (``quantlab.build``
and the rest), so that importing the package stays cheap."""

from __future__ import annotations

from quantlab.recipe import find_recipe, load_recipe
from quantlab.stages.attribute import attribute as _attribute
from quantlab.stages.build import build as _build
from quantlab.stages.evaluate.run import evaluate as _evaluate
from quantlab.stages.measure.run import measure_variant
from quantlab.stages.report import write_report
from quantlab.store.records import Attribution, Evaluation, Measurement

__all__ = ["attribute", "build", "evaluate", "load_recipe", "measure", "report"]


def build(recipe, artifacts="artifacts", force: bool = False, progress=None):
    """Builds the variant a recipe describes into the store (a cache hit when it is there already)."""
    return _build(recipe, artifacts, force=force, progress=progress)


def measure(
    variant, baseline=None, text=None, tokens: int = 16384, artifacts="artifacts", force: bool = False
) -> Measurement:
    """Per-expert error, routing drift, perplexity and KL drift of a built variant against its baseline."""
    return measure_variant(variant, baseline, text, tokens, artifacts, force=force)


def evaluate(subject, task: str, artifacts="artifacts", **options) -> Evaluation:
    """One lm-eval task on a variant or model source, with repeats and a 95% interval (``quantlab eval``)."""
    return _evaluate(subject, task, artifacts=artifacts, **options)


def attribute(recipe, tasks: list[str], artifacts="artifacts", **options) -> Attribution:
    """The recipe's accuracy loss and KL drift attributed to its choices (``quantlab attribute``)."""
    return _attribute(find_recipe(recipe), tasks, artifacts=artifacts, **options)


def report(artifacts="artifacts", out="artifacts/report", variants=None, baseline: str | None = "bf16"):
    """Writes the HTML report and its markdown twin from the store; returns their paths."""
    return write_report(artifacts, out, variants, baseline)
