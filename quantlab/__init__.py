"""quantlab: a quantization impact lab for Mixture-of-Experts language models.

The public API, one function per stage (each imports its stage on first use, so ``import quantlab`` is cheap)::

    import quantlab
    recipe = quantlab.load_recipe("mxfp4")               # a shipped recipe's name or a YAML file
    variant = quantlab.stages.build("mxfp4", "artifacts")        # -> BuildResult(path, cache_hit, manifest)
    drift = quantlab.stages.measure("mxfp4", artifacts="artifacts")
    result = quantlab.evaluate("mxfp4", "zoo_aime_style", limit=100, artifacts="artifacts")
    shares = quantlab.attribute("compactifai-like", ["zoo_aime_style"], limit=100, artifacts="artifacts")
    quantlab.stages.report("artifacts", "artifacts/report")
"""

from __future__ import annotations

__version__ = "0.1.0"


def load_recipe(recipe):
    """The validated recipe (``quantlab.recipe.Recipe``) of a YAML file or a shipped recipe's name."""
    # on use: `import quantlab` stays light; each stage loads torch
    from quantlab.recipe import load_recipe as load

    return load(recipe)


def build(recipe, artifacts="artifacts", force: bool = False, progress=None):
    """Builds the variant a recipe describes into the store (a cache hit when it is there already)."""
    # on use: `import quantlab` stays light; each stage loads torch
    from quantlab.stages.build import build as run

    return run(recipe, artifacts, force=force, progress=progress)


def measure(variant, baseline=None, text=None, tokens: int = 16384, artifacts="artifacts", force: bool = False) -> dict:
    """Per-expert error, routing drift, perplexity and KL drift of a built variant against its baseline."""
    # on use: `import quantlab` stays light; each stage loads torch
    from quantlab.stages.measure.run import measure_variant

    return measure_variant(variant, baseline, text, tokens, artifacts, force=force)


def evaluate(subject, task: str, artifacts="artifacts", **options) -> dict:
    """One lm-eval task on a variant or model source, with repeats and a 95% interval (``quantlab eval``)."""
    # on use: `import quantlab` stays light; each stage loads torch
    from quantlab.stages.evaluate.run import evaluate as run

    return run(subject, task, artifacts=artifacts, **options)


def attribute(recipe, tasks: list[str], artifacts="artifacts", **options) -> dict:
    """The recipe's accuracy loss and KL drift attributed to its choices (``quantlab attribute``)."""
    # on use: `import quantlab` stays light; each stage loads torch
    from quantlab.recipe import find_recipe

    # on use: `import quantlab` stays light; each stage loads torch
    from quantlab.stages.attribute import attribute as run

    return run(find_recipe(recipe), tasks, artifacts=artifacts, **options)


def report(artifacts="artifacts", out="artifacts/report", variants=None, baseline: str | None = "bf16"):
    """Writes the HTML report and its markdown twin from the store; returns their paths."""
    # on use: `import quantlab` stays light; each stage loads torch
    from quantlab.stages.report import write_report

    return write_report(artifacts, out, variants, baseline)


__all__ = ["__version__", "attribute", "build", "evaluate", "load_recipe", "measure", "report"]
