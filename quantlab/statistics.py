"""Every statistic the lab reports, in one place: intervals, paired tests, pass@k, and the per-token summaries
llama.cpp's ``llama-perplexity --kl-divergence`` prints.

scipy.stats supplies what it has: the exact binomial test behind McNemar's, Wilson's interval. The bootstraps
are written here because scipy.stats.bootstrap has neither form the lab needs: resampling items and, within
each resampled item, its repeats (a sampled evaluation has both sources of variation); and one set of
resampled items shared by many statistics at once (the attribution's shares are all means over the same items,
so their intervals must come from the same draws to be paired).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

# The percentiles llama.cpp prints (its "KL divergence statistics" and "Δp" blocks).
PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)
RESAMPLES = 2000


# --- accuracy over items ------------------------------------------------------------------------------------
def bootstrap_interval(
    correct: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean of ``correct`` (items, repeats), resampling items and, within each
    resampled item, its repeats (the two sources of variation of a sampled evaluation)."""
    items, repeats = correct.shape
    rng = np.random.default_rng(seed)
    item_draws = rng.integers(0, items, size=(resamples, items))
    repeat_draws = rng.integers(0, repeats, size=(resamples, items, repeats))
    means = correct[item_draws[..., None], repeat_draws].mean(axis=(1, 2))
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_bootstrap(
    vectors: dict[str, np.ndarray], weights: np.ndarray | None = None, seed: int = 0, resamples: int = RESAMPLES
) -> dict[str, dict]:
    """Point value and 95% percentile interval of each per-item vector's mean (or, with ``weights``, of
    sum(vector) / sum(weights): a per-token mean from per-problem sums), all from the same resampled items."""
    n = len(next(iter(vectors.values())))
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    out = {}
    for name, vector in vectors.items():
        if weights is None:
            point, resampled = float(vector.mean()), vector[draws].mean(axis=1)
        else:
            point, resampled = (
                float(vector.sum() / weights.sum()),
                vector[draws].sum(axis=1) / weights[draws].sum(axis=1),
            )
        out[name] = {
            "value": point,
            "ci95": [float(np.quantile(resampled, 0.025)), float(np.quantile(resampled, 0.975))],
        }
    return out


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion (scipy.stats.binomtest)."""
    if n == 0:
        return (0.0, 1.0)
    interval = stats.binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return (max(0.0, float(interval.low)), min(1.0, float(interval.high)))


def mcnemar_exact(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs tested against 1/2 (scipy.stats.binomtest)."""
    n = right_to_wrong + wrong_to_right
    if n == 0:
        return 1.0
    return min(1.0, float(stats.binomtest(right_to_wrong, n, 0.5).pvalue))


def flips(baseline: np.ndarray, variant: np.ndarray) -> dict:
    """Items right for the baseline and wrong for the variant and the reverse, by majority over repeats
    (``*``: (items, repeats) correctness in [0, 1]), with McNemar's exact p-value."""
    base_right = baseline.mean(axis=1) >= 0.5
    variant_right = variant.mean(axis=1) >= 0.5
    right_to_wrong = int((base_right & ~variant_right).sum())
    wrong_to_right = int((~base_right & variant_right).sum())
    return {
        "items": int(baseline.shape[0]),
        "right_to_wrong": right_to_wrong,
        "wrong_to_right": wrong_to_right,
        "mcnemar_p": mcnemar_exact(right_to_wrong, wrong_to_right),
    }


def pass_at_k(correct: np.ndarray, k: int) -> float:
    """The unbiased pass@k (Chen et al., 2021) averaged over items: 1 - C(n-c, k) / C(n, k) per item, with n
    samples of which c are correct (``correct``: (items, n))."""
    n = correct.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= {n} samples, got k={k}")
    c = (correct >= 0.5).sum(axis=1)
    return float(np.mean([1.0 - math.comb(n - int(ci), k) / math.comb(n, k) for ci in c]))


# --- per-token summaries ------------------------------------------------------------------------------------
def distribution(values: np.ndarray) -> dict:
    """Mean with its standard error, max, the llama.cpp percentiles, min, and the count."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n == 0:
        return {"n": 0}
    result = {
        "n": int(n),
        "mean": float(values.mean()),
        "mean_stderr": float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "max": float(values.max()),
    }
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
