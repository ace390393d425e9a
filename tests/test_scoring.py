"""The interval on reported scores."""

import pytest

from quantlab.statistics import wilson_interval


def test_wilson_interval_worked_by_hand():
    # 495/500, z = 1.96: centre (0.99 + 1.96²/1000) / (1 + 1.96²/500) = 0.98626,
    # half-width 1.96·sqrt(0.99·0.01/500 + 1.96²/(4·500²)) / 1.0076832 = 0.0094574.
    low, high = wilson_interval(495, 500)
    assert low == pytest.approx(0.97680, abs=2e-5) and high == pytest.approx(0.99572, abs=2e-5)
    # 0/n keeps a non-degenerate upper bound (z²/(n + z²)); n/n mirrors it.
    assert wilson_interval(0, 20) == pytest.approx((0.0, 1.96**2 / (20 + 1.96**2)), abs=1e-4)
    assert wilson_interval(20, 20)[0] == pytest.approx(20 / (20 + 1.96**2), abs=1e-4)
