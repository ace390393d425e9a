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


# --- conformance tests (quantlab audit) ---------------------------------------------------------------------
def excess_rate_test(events: int, n: int, null_rate: float) -> float:
    """One-sided exact binomial p-value that ``events`` of ``n`` trials come from a rate above ``null_rate``
    (scipy.stats.binomtest): how an audit tests "more disagreements than a faithful host makes"."""
    if n == 0:
        return 1.0
    return float(stats.binomtest(events, n, null_rate, alternative="greater").pvalue)


def exceedance_p_value(exceed: int, n: int, calibration: int, rank: int) -> float:
    """Exact p-value that ``exceed`` of ``n`` new values lie above the ``rank``-th largest of ``calibration``
    values drawn from the same distribution (exchangeable): their places among all the values are a uniformly
    random choice, so that at least ``exceed`` new values are among the top ``exceed + rank - 1`` places with a
    hypergeometric probability (scipy.stats.hypergeom). A permutation test: exact whatever the distribution."""
    if exceed <= 0:
        return 1.0
    return float(stats.hypergeom.sf(exceed - 1, calibration + n, n, exceed + rank - 1))


def detectable_rate(n: int, null_rate: float, alpha: float, power: float = 0.8) -> float | None:
    """The smallest event rate ``excess_rate_test`` on ``n`` trials detects with ``power`` at level ``alpha``
    (exact binomial; None when even a rate of 1 is not detected)."""
    if n == 0:
        return None
    # the smallest count that rejects, then the rate whose chance of reaching it is ``power``
    critical = next((k for k in range(n + 1) if excess_rate_test(k, n, null_rate) < alpha), None)
    if critical is None:
        return None
    low, high = null_rate, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if stats.binom.sf(critical - 1, n, middle) < power else (low, middle)
    return high


def signed_rank_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired ``differences`` (scipy.stats.wilcoxon; zero differences
    split between the signs, Pratt's way of keeping them in the ranks); 1 when every difference is zero."""
    differences = np.asarray(differences, dtype=np.float64)
    if differences.size == 0 or not np.any(differences):
        return 1.0
    return float(stats.wilcoxon(differences, zero_method="zsplit").pvalue)


def hamming_kernel(a: list[str], b: list[str], length: int) -> np.ndarray:
    """The Hamming kernel of Model Equality Testing (Gao, Liang and Guestrin, 2024) between two lists of texts:
    the fraction of the first ``length`` characters that agree (texts padded with a character no text holds)."""

    def padded(texts: list[str]) -> np.ndarray:
        codes = np.full((len(texts), length), -1, dtype=np.int64)
        for row, text in enumerate(texts):
            values = [ord(c) for c in text[:length]]
            codes[row, : len(values)] = values
        return codes

    x, y = padded(a), padded(b)
    return (x[:, None, :] == y[None, :, :]).mean(axis=2)


def mmd_permutation_test(
    first: list[list[str]], second: list[list[str]], permutations: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """(MMD², p-value) of two samples of texts per prompt (``first[i]``, ``second[i]``: samples for prompt i),
    with the Hamming kernel: the unbiased MMD² summed over prompts, its p-value from permuting the pooled
    samples within each prompt (the test of Model Equality Testing; exact in level whatever the kernel)."""
    rng = np.random.default_rng(seed)
    strata = []
    for a, b in zip(first, second):
        pooled = list(a) + list(b)
        length = max(1, max(len(t) for t in pooled))
        strata.append((hamming_kernel(pooled, pooled, length), len(a)))

    def mmd2(kernel: np.ndarray, order: np.ndarray, m: int) -> float:
        k = kernel[np.ix_(order, order)]
        n = k.shape[0] - m
        kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
        return float(
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
        )

    observed = sum(mmd2(kernel, np.arange(len(kernel)), m) for kernel, m in strata)
    exceed = 0
    for _ in range(permutations):
        value = sum(mmd2(kernel, rng.permutation(len(kernel)), m) for kernel, m in strata)
        exceed += value >= observed - 1e-12
    return observed, (exceed + 1) / (permutations + 1)
