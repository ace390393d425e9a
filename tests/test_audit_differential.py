"""quantlab audit URL --reference-url TRUSTED: every check run against a trusted endpoint instead of a local
reference. The trusted host is vLLM serving the reference (bf16) behind the lab's chat front; the audited hosts
are llama.cpp servers of its bf16 GGUF, faithful or with one mistake, and of the mxfp4 variant. Every server
listens on 127.0.0.1 and is stopped by the fixture or test that started it."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import entropy

from quantlab.errors import UserError
from quantlab.runtimes.chat_front import FrontSettings
from quantlab.token_statistics import topk_pair_kl

REPO = Path(__file__).resolve().parent.parent
needs_vllm = pytest.mark.skipif(
    not (os.environ.get("QUANTLAB_VLLM_PYTHON") or (REPO / ".venv-vllm" / "bin" / "python").is_file()),
    reason="needs vLLM (.venv-vllm: bash scripts/setup.sh)",
)
needs_llama_server = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="needs quantlab[gguf] (llama-cpp-python)"
)

CHECKS = ("weights", "sampling", "template", "effort", "accuracy", "tools", "shape")


# --- the statistic ---------------------------------------------------------------------------------------------


def test_the_top_k_pair_kl_is_the_kl_of_the_distributions_merged_outside_the_shared_tokens():
    # reference top-2 {0: .5, 1: .3} (rest .2), served top-2 {0: .4, 2: .4} (rest .2): token 0 is shared, so
    # the outcomes are {0, everything else}: (.5, .5) against (.4, .6), by scipy
    reference = {0: math.log(0.5), 1: math.log(0.3)}
    served = {0: math.log(0.4), 2: math.log(0.4)}
    assert topk_pair_kl(reference, served) == pytest.approx(entropy([0.5, 0.5], [0.4, 0.6]), abs=1e-5)
    assert topk_pair_kl(reference, reference) == 0.0


def test_the_top_k_pair_kl_never_exceeds_the_full_kl():
    generator = np.random.default_rng(0)
    for _ in range(50):
        p = generator.dirichlet(np.full(30, 0.3))
        q = 0.7 * p + 0.3 * generator.dirichlet(np.full(30, 0.3))
        top = lambda d, k: {int(i): float(np.log(d[i])) for i in np.argsort(d)[::-1][:k]}  # noqa: E731
        for k in (1, 5, 20):
            assert topk_pair_kl(top(p, k), top(q, k)) <= entropy(p, q) + 1e-6


# --- against a trusted vLLM host -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """The store (bf16, its GGUF, mxfp4) and the trusted vLLM server, up for the whole module."""
    from quantlab.runtimes.serve import serve
    from quantlab.stages.build import build

    root = tmp_path_factory.mktemp("differential")
    for recipe in ("bf16", "bf16-gguf", "mxfp4"):
        build(recipe, root)
    with serve("bf16", "vllm", root, front=FrontSettings()) as trusted:
        yield root, trusted.base_url


def _audit(store, trusted_url, variant, front, **options):
    from quantlab.runtimes.serve import serve
    from quantlab.stages.audit import audit

    with serve(variant, "llama.cpp", store, front=front) as server:
        return audit(server.base_url, artifacts=store, reference_url=trusted_url, **options)


@pytest.fixture(scope="module")
def calibrated(hosts):
    """The faithful llama.cpp host declared faithful against the trusted one, on questions of its own (seed 999):
    another engine's arithmetic, which the trusted endpoint's reruns (bit-identical on these CPUs) cannot show."""
    store, trusted_url = hosts
    before = _audit(store, trusted_url, "bf16-gguf", FrontSettings(), checks=["weights"], seed=999, calibrate=True)
    return store, trusted_url, before.checks[0]


@needs_vllm
@needs_llama_server
def test_a_faithful_llama_cpp_host_passes_every_check_against_a_faithful_vllm_host(calibrated, monkeypatch):
    store, trusted_url, uncalibrated = calibrated
    # before any calibration, the null is the trusted endpoint's reruns: identical here, so any other engine's
    # arithmetic is a departure, and the check says why
    assert uncalibrated.verdict == "fail" and "reproduces itself exactly" in uncalibrated.reason
    assert uncalibrated.detail["rerun_kl_max"] == 0.0

    from quantlab.stages.audit import local

    def no_weights(*args, **kwargs):
        raise AssertionError("a differential audit loaded the reference's weights")

    monkeypatch.setattr(local, "load_model", no_weights)
    record = _audit(store, trusted_url, "bf16-gguf", FrontSettings())
    assert {c.name: c.verdict for c in record.checks} == dict.fromkeys(CHECKS, "pass"), [
        (c.name, c.reason) for c in record.checks if c.verdict != "pass"
    ]
    weights = record.checks[0]
    assert weights.detail["mode"] == "differential log-probabilities"
    assert "declared faithful" in weights.detail["calibration"] and weights.detail["calibration_size"] == 96
    assert record.reference_endpoint.endswith(trusted_url) and record.reference_queries > 0
    template = next(c for c in record.checks if c.name == "template")
    assert template.detail["compared_with"] == record.reference_endpoint
    assert record.candidates == []


@needs_vllm
@needs_llama_server
@pytest.mark.parametrize(
    ("variant", "front", "check", "diagnosis", "cause"),
    [
        # no local formats in a differential audit: the weights are "an unknown format"
        ("mxfp4", FrontSettings(), "weights", {}, "weights: an unknown format"),
        (
            "bf16-gguf",
            FrontSettings(effort_honored=False),
            "effort",
            {"looks_like": {"low": "medium", "medium": "medium", "high": "medium"}},
            "effort dropped",
        ),
        (
            "bf16-gguf",
            FrontSettings(chat_template="chatml"),
            "template",
            {"renders_like": "chatml"},
            "template: chatml",
        ),
        ("bf16-gguf", FrontSettings(sampling_honored=False), "sampling", {}, "sampling dropped"),
    ],
    ids=["mxfp4-weights", "effort-dropped", "chatml", "sampling-dropped"],
)
def test_each_shipped_distortion_fails_its_own_check_against_the_trusted_host(
    calibrated, variant, front, check, diagnosis, cause
):
    store, trusted_url, _ = calibrated
    record = _audit(store, trusted_url, variant, front, checks=[check])
    (result,) = record.checks
    assert result.verdict == "fail" and result.p_value < record.alpha, result.reason
    for key, value in diagnosis.items():
        assert result.detail[key] == value
    # the cause ranking, its fingerprints simulated through the trusted endpoint, names the departure first
    assert record.causes[0].name == cause, record.cause


@needs_vllm
@needs_llama_server
def test_a_trusted_endpoint_that_does_not_answer_is_one_line(hosts):
    from quantlab.runtimes.serve import serve
    from quantlab.stages.audit import audit

    store, _ = hosts
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"  # closed again: nothing listens there
    with serve("bf16-gguf", "llama.cpp", store, front=FrontSettings()) as server:
        with pytest.raises(UserError) as error:
            audit(server.base_url, artifacts=store, reference_url=dead)
        with pytest.raises(UserError, match="--candidates"):
            audit(server.base_url, artifacts=store, reference_url=dead, candidates=["mxfp4"])
        with pytest.raises(UserError, match="--reference-url: endpoint 'ftp://x': give an http"):
            audit(server.base_url, artifacts=store, reference_url="ftp://x")
    message = str(error.value)
    assert message.startswith(f"--reference-url {dead}") and "\n" not in message
