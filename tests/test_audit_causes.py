"""The audit's cause ranking: its likelihood, computed by hand on a small case, and the library it ranks.

The end-to-end checks (a served host with a held-out fault, the ranking's answer) are in tests/test_audit.py,
beside the servers they need; ``quantlab bench audit --part causes`` measures rank-1 accuracy on every held-out
fault (docs/audit.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantlab.bench.audit_causes import FAULTS, held_out_template
from quantlab.plugins import Probe
from quantlab.stages.audit import causes
from quantlab.stages.audit.checks.base import SeenTurn


def _seen(text: str, effort: str | None = None) -> SeenTurn:
    return SeenTurn(Probe("1+1", "2"), effort, 96, False, text)


def test_a_fingerprints_log_likelihood_is_the_exponential_kl_and_bernoulli_turns_computed_by_hand():
    kl = np.array([1e-4, 3e-4, -2e-7])  # the top-k bound's small negatives count as 0
    evidence = causes.Evidence(
        weights_kl={"ref": kl},
        seen=[_seen("a"), _seen("b"), _seen("c"), _seen("d")],
        greedy_varied=np.array([False, True]),
        predicted={"known": ["a", "b", "c", "x"], "unknown": ["a", "b", "c", "x"]},
    )
    known = causes.Fingerprint("known", "engine", "ref", noise=2e-4)
    total, parts = causes.log_likelihood(known, evidence)
    # exponential with mean 2e-4 at each KL; 3 of 4 turns reproduced at 1 - 0.05; 1 of 2 questions varied at 0.05
    weights = sum(-math.log(2e-4) - x / 2e-4 for x in (1e-4, 3e-4, 0.0))
    turns = 3 * math.log(0.95) + math.log(0.05) + math.log(0.01)  # the missed turn's text: 1%
    variation = math.log(0.05) + math.log(0.95)
    assert parts == pytest.approx({"weights": weights, "turns": turns, "greedy variation": variation})
    assert total == pytest.approx(weights + turns + variation)

    # fitted: the scale is the KLs' mean (no smaller than the noise), the miss rate the observed one, and each
    # fitted parameter costs half the log of its observations (Schwarz)
    unknown = causes.Fingerprint("unknown", "weights", "ref", noise=1e-5, fits_noise=True, known=False)
    _, fitted = causes.log_likelihood(unknown, evidence)
    scale = (1e-4 + 3e-4 + 0.0) / 3
    assert fitted["weights"] == pytest.approx(
        sum(-math.log(scale) - x / scale for x in (1e-4, 3e-4, 0.0)) - 0.5 * math.log(3)
    )
    assert fitted["turns"] == pytest.approx(3 * math.log(0.75) + math.log(0.25) + math.log(0.01) - 0.5 * math.log(4))


def test_a_fitted_kl_scale_never_goes_below_the_faithful_noise():
    """An endpoint closer to the reference than the calibration's noise (llama.cpp against a bf16 stand-in) must
    not make "an unknown format" likelier than the faithful engine."""
    evidence = causes.Evidence({"ref": np.full(24, 1e-7)}, [], np.array([], dtype=bool))
    faithful = causes.Fingerprint("engine", "engine", "ref", noise=1e-4)
    unknown = causes.Fingerprint("unknown", "weights", "ref", noise=1e-4, fits_noise=True, known=False)
    assert causes.log_likelihood(faithful, evidence)[0] > causes.log_likelihood(unknown, evidence)[0]


def test_a_fingerprint_fitted_to_miss_every_turn_does_not_beat_one_that_reproduces_them():
    """Binary outcomes alone would let "an unknown rendering" fit a host it predicts nothing of (miss rate 1);
    each miss's text costs alike, so the wrong rendering that reproduces the turns ranks above it."""
    seen = [_seen(str(i)) for i in range(20)]
    predicted = {"chatml": [str(i) for i in range(19)] + ["x"], "unknown": ["x"] * 20}
    evidence = causes.Evidence({}, seen, np.array([], dtype=bool), predicted)
    known = causes.Fingerprint("chatml", "template", "ref", template="chatml")
    unknown = causes.Fingerprint("unknown", "template", "ref", known=False)
    assert causes.log_likelihood(known, evidence)[0] > causes.log_likelihood(unknown, evidence)[0]


def test_a_sampling_host_is_expected_to_vary_where_a_greedy_one_is_not():
    evidence = causes.Evidence({}, [], np.array([True, True, True]))
    greedy = causes.Fingerprint("engine", "engine", "ref")
    sampling = causes.Fingerprint("sampling dropped", "sampling", "ref", sampled=True)
    assert causes.log_likelihood(greedy, evidence)[1] == {"greedy variation": pytest.approx(3 * math.log(0.05))}
    assert causes.log_likelihood(sampling, evidence)[1] == {"greedy variation": pytest.approx(3 * math.log(0.95))}


def test_a_hosts_effort_policy_renders_each_request():
    dropped = causes.Fingerprint("effort dropped", "effort", "ref", effort=causes.DROPPED)
    fixed = causes.Fingerprint("effort fixed at high", "effort", "ref", effort="high")
    assert [dropped.served_effort(e) for e in ("low", None)] == [None, None]
    assert [fixed.served_effort(e) for e in ("low", None)] == ["high", "high"]
    # a completions request was rendered by the audit: no host template or effort applies to it
    rendered_here = SeenTurn(Probe("1+1", "2"), "low", 96, True, "")
    wrong = causes.Fingerprint("template: chatml", "template", "ref", template="chatml", effort="high")
    assert wrong.rendering(rendered_here) == ("model", "low")
    assert wrong.rendering(_seen("", "low")) == ("chatml", "high")


def test_the_held_out_faults_are_not_what_the_lab_ships():
    """The bench's faults come from recipes and templates outside recipes/ and quantlab.chat's names, and their
    template edits apply to the model's own template (each changes it)."""
    from pathlib import Path

    from quantlab.chat import NAMED, model_template
    from quantlab.models.loading import default_model
    from quantlab.store import as_store

    shipped = {path.stem for path in Path("recipes").glob("*.yaml")}
    assert len(FAULTS) >= 8
    for fault in FAULTS:
        assert fault.template not in NAMED
        if fault.recipe:
            assert fault.variant not in shipped
    own = model_template(as_store(None).subject(default_model()).model_folder)
    assert own is not None
    edits = {fault.template for fault in FAULTS if fault.template}
    assert len({held_out_template(edit, own) for edit in edits} | {own}) == len(edits) + 1
