"""Attribution designs on synthetic losses with known answers."""

import itertools

import pytest

from quantlab.stages.factor_designs import full_factorial, leave_one_out, one_at_a_time, shapley

EFFECTS = {"experts": 20.0, "attention": 5.0, "router": 1.0, "embeddings": 0.5}


def additive(cell):
    return sum(EFFECTS[f] for f in cell)


def test_additive_losses_are_attributed_exactly_by_every_design():
    factors = list(EFFECTS)
    assert one_at_a_time(factors, additive) == EFFECTS
    assert leave_one_out(factors, additive) == EFFECTS
    result = shapley(factors, additive)
    assert result["method"] == "exact"
    assert result["shares"] == pytest.approx(EFFECTS)
    assert result["efficiency_gap"] == pytest.approx(0.0, abs=1e-12) and result["interaction"] == pytest.approx(0.0)
    assert len(full_factorial(factors, additive)) == 16


def test_a_known_interaction_is_split_evenly_and_reported():
    """Loss = 10·a + 4·b + 6·(a and b): Shapley gives a 10 + 3, b 4 + 3; one-at-a-time misses the 6, leave-one-out
    counts it twice; the interaction remainder is exactly 6."""

    def loss(cell):
        return 10 * ("a" in cell) + 4 * ("b" in cell) + 6 * ("a" in cell and "b" in cell)

    result = shapley(["a", "b", "c"], loss)
    assert result["shares"] == pytest.approx({"a": 13.0, "b": 7.0, "c": 0.0})
    assert result["interaction"] == pytest.approx(6.0) and result["efficiency_gap"] == pytest.approx(0.0, abs=1e-12)
    assert one_at_a_time(["a", "b"], loss) == {"a": 10, "b": 4}
    assert leave_one_out(["a", "b"], loss) == {"a": 16, "b": 10}


def test_sampled_shapley_beyond_six_factors_has_honest_errors():
    factors = [f"f{i}" for i in range(8)]
    weights = {f: float(i + 1) for i, f in enumerate(factors)}

    def loss(cell):  # additive plus one pairwise interaction of 4 between f0 and f7
        return sum(weights[f] for f in cell) + 4.0 * ("f0" in cell and "f7" in cell)

    result = shapley(factors, loss, permutations=3000, seed=1)
    assert result["method"].startswith("3000 sampled")
    assert result["efficiency_gap"] == pytest.approx(0.0, abs=1e-9)  # every permutation sums to the total
    truth = dict(weights, f0=weights["f0"] + 2.0, f7=weights["f7"] + 2.0)
    for f in factors:
        assert abs(result["shares"][f] - truth[f]) <= 4 * result["stderr"][f] + 1e-12, f
    assert result["stderr"]["f3"] == 0.0 and result["stderr"]["f0"] > 0  # only interacting factors vary


def test_exact_shapley_matches_the_permutation_definition():
    """Exact weights equal the average marginal contribution over all 4! orders."""
    factors = ["a", "b", "c", "d"]

    def loss(cell):
        return len(cell) ** 2 + 3 * ("a" in cell and "c" in cell) - ("d" in cell)

    brute = {f: 0.0 for f in factors}
    orders = list(itertools.permutations(factors))
    for order in orders:
        cell = frozenset()
        for f in order:
            brute[f] += (loss(cell | {f}) - loss(cell)) / len(orders)
            cell = cell | {f}
    assert shapley(factors, loss)["shares"] == pytest.approx(brute)


def test_sampled_shapley_takes_per_item_vectors():
    """Seven factors (beyond exact): per-item loss vectors of an additive model. Every marginal contribution is
    the factor's own vector, so the sampled share is exactly it, with zero sampling error; with an interaction
    the sampling error is stated and the efficiency gap stays at rounding."""
    import numpy as np

    rng = np.random.default_rng(0)
    effects = {f"f{i}": rng.normal(size=50) for i in range(7)}

    def additive_items(cell):
        return sum((effects[f] for f in cell), np.zeros(50))

    result = shapley(list(effects), additive_items, permutations=64, seed=1)
    assert result["method"] == "64 sampled permutations"
    for f, vector in effects.items():
        assert np.allclose(result["shares"][f], vector) and result["stderr"][f] == pytest.approx(0.0, abs=1e-12)

    def interacting(cell):
        return additive_items(cell) + 5.0 * ("f0" in cell and "f1" in cell)

    result = shapley(list(effects), interacting, permutations=64, seed=1)
    assert np.allclose(result["efficiency_gap"], 0.0, atol=1e-9)
    assert result["stderr"]["f0"] > 0 and result["stderr"]["f2"] == pytest.approx(0.0, abs=1e-12)
    assert np.mean(result["shares"]["f0"] - effects["f0"]) == pytest.approx(2.5, abs=4 * result["stderr"]["f0"])
