"""quantlab: a quantization impact lab for Mixture-of-Experts language models.

The public API, one function per stage (``quantlab.api``, loaded on first use, so ``import quantlab`` is cheap)::

    import quantlab
    recipe = quantlab.load_recipe("mxfp4")               # a shipped recipe's name or a YAML file
    variant = quantlab.build("mxfp4", "artifacts")       # -> BuildResult(path, cache_hit, manifest: Manifest)
    drift = quantlab.measure("mxfp4", artifacts="artifacts")
    result = quantlab.evaluate("mxfp4", "zoo_aime_style", limit=100, artifacts="artifacts")
    shares = quantlab.attribute("compactifai-like", ["zoo_aime_style"], limit=100, artifacts="artifacts")
    quantlab.report("artifacts", "artifacts/report")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "attribute", "build", "evaluate", "load_recipe", "measure", "report"]


def __getattr__(name: str) -> Any:
    """The API's functions, from ``quantlab.api`` on first use (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module 'quantlab' has no attribute {name!r}")
    # on use: each stage loads torch, transformers and lm-eval; `import quantlab` (and the CLI's start) does not
    from quantlab import api

    return getattr(api, name)
