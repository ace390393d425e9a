"""Statistics of repeated task evaluations: a bootstrap interval over items, flips and McNemar's exact test."""

from __future__ import annotations

import math

import numpy as np


def bootstrap_interval(correct: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``correct`` (items, repeats), resampling items and, within each
    resampled item, its repeats (the two sources of variation of a sampled evaluation)."""
    items, repeats = correct.shape
    rng = np.random.default_rng(seed)
    item_draws = rng.integers(0, items, size=(resamples, items))
    repeat_draws = rng.integers(0, repeats, size=(resamples, items, repeats))
    means = correct[item_draws[..., None], repeat_draws].mean(axis=(1, 2))
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def mcnemar_exact(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs against 1/2."""
    n = right_to_wrong + wrong_to_right
    if n == 0:
        return 1.0
    k = min(right_to_wrong, wrong_to_right)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def flips(baseline: np.ndarray, variant: np.ndarray) -> dict:
    """Items right for the baseline and wrong for the variant and the reverse, by majority over repeats
    (``*``: (items, repeats) correctness in [0, 1]), with McNemar's exact p-value."""
    base_right = baseline.mean(axis=1) >= 0.5
    variant_right = variant.mean(axis=1) >= 0.5
    right_to_wrong = int((base_right & ~variant_right).sum())
    wrong_to_right = int((~base_right & variant_right).sum())
    return {"items": int(baseline.shape[0]), "right_to_wrong": right_to_wrong, "wrong_to_right": wrong_to_right,
            "mcnemar_p": mcnemar_exact(right_to_wrong, wrong_to_right)}


def pass_at_k(correct: np.ndarray, k: int) -> float:
    """The unbiased pass@k (Chen et al., 2021) averaged over items: 1 - C(n-c, k) / C(n, k) per item, with n
    samples of which c are correct (``correct``: (items, n))."""
    n = correct.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= {n} samples, got k={k}")
    c = (correct >= 0.5).sum(axis=1)
    return float(np.mean([1.0 - math.comb(n - int(ci), k) / math.comb(n, k) for ci in c]))
