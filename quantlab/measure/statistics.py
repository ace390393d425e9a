"""Summary statistics of per-token quantities, as llama.cpp's ``llama-perplexity --kl-divergence`` reports them."""

from __future__ import annotations

import math

import numpy as np

# The percentiles llama.cpp prints (its "KL divergence statistics" and "Δp" blocks).
PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)


def distribution(values: np.ndarray) -> dict:
    """Mean with its standard error, max, the llama.cpp percentiles, min, and the count."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n == 0:
        return {"n": 0}
    result = {"n": int(n), "mean": float(values.mean()),
              "mean_stderr": float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None, "max": float(values.max())}
    for p in PERCENTILES:
        result[f"p{p:g}"] = float(np.percentile(values, p))
    result["min"] = float(values.min())
    return result


def rate(successes: int, n: int) -> dict:
    """A proportion with its binomial standard error (as llama.cpp's "Same top p")."""
    if n == 0:
        return {"n": 0}
    p = successes / n
    return {"n": n, "rate": p, "stderr": math.sqrt(p * (1 - p) / n)}


def perplexity(nll: np.ndarray) -> dict:
    """exp(mean NLL) with the standard error of the mean NLL carried through (delta method)."""
    nll = np.asarray(nll, dtype=np.float64)
    if nll.size == 0:
        return {"n": 0}
    mean = float(nll.mean())
    stderr = float(nll.std(ddof=1) / math.sqrt(nll.size)) if nll.size > 1 else 0.0
    return {"n": int(nll.size), "ppl": math.exp(mean), "ppl_stderr": math.exp(mean) * stderr, "mean_nll": mean}
