"""Attribution of a loss to the factors of a recipe: experimental designs and Shapley values.

A factor is one choice of a recipe (a group, or a choice within it); a *cell* is the set of factors applied,
and ``value(cell)`` is what a variant built with exactly those factors loses against the baseline (accuracy
points, KL). The designs say which cells to build: one-at-a-time (each factor alone), leave-one-out
(everything but one), full factorial (every subset, up to 4 factors), and Shapley values: exact over every
subset up to 6 factors, permutation-sampled beyond, with the sampling error stated. Shapley shares always sum
to value(all) - value(none) (efficiency), which is the check a report prints.

Pure functions of a ``value`` callable: quantlab's attribute command supplies one that builds, measures and
evaluates the cell (cached); the tests supply known functions. A value may be a number or a numpy vector (one
loss per evaluated item): every design is linear in the values, so a vector-valued share is the per-item
contribution whose mean is the share, which is what lets ``quantlab.stages.attribute`` bootstrap an interval over items.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Hashable, Sequence

import numpy as np

Value = Callable[[frozenset], float]
EXACT_SHAPLEY_MAX = 6
FACTORIAL_MAX = 4


def one_at_a_time(factors: Sequence[Hashable], value: Value) -> dict:
    """Each factor's effect applied alone: value({i}) - value({})."""
    none = value(frozenset())
    return {f: value(frozenset([f])) - none for f in factors}


def leave_one_out(factors: Sequence[Hashable], value: Value) -> dict:
    """Each factor's effect as the last one added: value(all) - value(all but i)."""
    everything = frozenset(factors)
    full = value(everything)
    return {f: full - value(everything - {f}) for f in factors}


def full_factorial(factors: Sequence[Hashable], value: Value) -> dict[frozenset, float]:
    """value of every subset of the factors (2^n cells; at most ``FACTORIAL_MAX`` factors)."""
    if len(factors) > FACTORIAL_MAX:
        raise ValueError(f"a full factorial design takes at most {FACTORIAL_MAX} factors, got {len(factors)}")
    return {
        frozenset(c): value(frozenset(c)) for r in range(len(factors) + 1) for c in itertools.combinations(factors, r)
    }


def shapley(factors: Sequence[Hashable], value: Value, permutations: int = 2000, seed: int = 0) -> dict:
    """Shapley value of each factor, with the interaction remainder and the efficiency check.

    Exact (every subset, weighted |S|!(n-|S|-1)!/n!) up to ``EXACT_SHAPLEY_MAX`` factors; beyond, the mean
    marginal contribution over ``permutations`` random orders, with its standard error per factor.
    """
    factors = list(factors)
    n = len(factors)
    cache: dict[frozenset, float] = {}

    def v(cell: frozenset) -> float:
        if cell not in cache:
            cache[cell] = value(cell)
        return cache[cell]

    shares, stderr = {}, {}
    if n <= EXACT_SHAPLEY_MAX:
        for f in factors:
            others = [g for g in factors if g != f]
            total = 0.0
            for r in range(n):
                weight = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
                for subset in itertools.combinations(others, r):
                    cell = frozenset(subset)
                    total += weight * (v(cell | {f}) - v(cell))
            shares[f], stderr[f] = total, 0.0
        method = "exact"
    else:
        rng = random.Random(seed)
        samples: dict[Hashable, list[float]] = {f: [] for f in factors}
        for _ in range(permutations):
            order = factors[:]
            rng.shuffle(order)
            cell = frozenset()
            before = v(cell)
            for f in order:
                cell = cell | {f}
                after = v(cell)
                samples[f].append(after - before)
                before = after
        for f in factors:
            values = samples[f]
            shares[f] = sum(values) / len(values)
            # the sampling error of the share's scalar value (a vector value's mean over items)
            points = [float(np.mean(x)) for x in values]
            mean = sum(points) / len(points)
            stderr[f] = math.sqrt(sum((x - mean) ** 2 for x in points) / (len(points) - 1) / len(points))
        method = f"{permutations} sampled permutations"
    total = v(frozenset(factors)) - v(frozenset())
    alone = one_at_a_time(factors, v)
    return {
        "method": method,
        "shares": shares,
        "stderr": stderr,
        "total": total,
        "efficiency_gap": total - sum(shares.values()),  # 0 up to rounding for exact Shapley
        "interaction": total - sum(alone.values()),  # what the factors do together beyond their solo effects
        "cells_evaluated": len(cache),
    }
