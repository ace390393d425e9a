"""``quantlab bench audit``: does the audit tell faithful servers from distorted ones, how often does it cry
wolf, and how many queries does each distortion take to find?

Every server is one the lab starts itself on 127.0.0.1 (``quantlab serve``, the chat front in front of the
engine): the reference served faithfully (vLLM on the bf16 variant, llama.cpp on its bf16 GGUF), and one server
per distortion: quantized weights (mxfp4, int4, Q4_K_M, compactifai-like), the effort dropped, each wrong
template, the sampling settings dropped. Three measurements:

* ``table``: one full audit per server (seed 0): every check's verdict and the candidate the weights check names;
* ``false_positives``: audits of the faithful servers with seeds 1..N: the rate of failing verdicts per check,
  with its 95% interval, against the tests' nominal level;
* ``power``: for each distortion, its own check alone at several budgets, ``repeats`` audits each (seeds): the
  share that fail, and the smallest budget reaching 80%;
* ``calibrated``: the weights check calibrated on a faithful vLLM server (``--calibrate``, its own questions),
  then its false positives on both faithful servers and its power on each distorted-weights server at the
  default budget; the store's calibration is put back afterwards;
* ``differential``: every audit against a trusted endpoint instead of the local reference (``--reference-url``:
  bf16 through vLLM): the faithful llama.cpp server first audited as is (the trusted endpoint's reruns the only
  null), then declared faithful on questions of its own (``--calibrate``), then audited with seeds 1..N (false
  positives per check), and every distorted server audited once (seed 0).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from quantlab import statistics
from quantlab.bench.serve import _cpu
from quantlab.models.loading import default_model
from quantlab.runtimes.chat_front import FrontSettings
from quantlab.runtimes.serve import ServeOptions, serve
from quantlab.stages.audit import ALPHA, CHECKS, audit
from quantlab.stages.audit import calibration as calibration_module
from quantlab.stages.build import build
from quantlab.store import as_store


@dataclass(frozen=True)
class Host:
    label: str
    variant: str  # a shipped recipe's name (built in the store when missing)
    engine: str
    distortion: str  # "" for a faithful server
    check: str = ""  # the check that must find the distortion
    front: FrontSettings = field(default_factory=FrontSettings)
    load: str = "auto"


FAITHFUL = (
    Host("bf16 through vLLM", "bf16", "vllm", ""),
    Host("bf16 through llama.cpp", "bf16-gguf", "llama.cpp", ""),
)
DISTORTED = (
    Host("mxfp4 weights (llama.cpp, GGUF)", "mxfp4", "llama.cpp", "weights: mxfp4", "weights"),
    Host("int4 weights (vLLM, dequantized)", "int4-rtn", "vllm", "weights: int4-rtn", "weights", load="hf"),
    Host("Q4_K_M weights (llama.cpp)", "gguf-q4_k_m", "llama.cpp", "weights: gguf-q4_k_m", "weights"),
    Host(
        "compactifai-like weights (vLLM)", "compactifai-like", "vllm", "weights: compactifai-like", "weights", load="hf"
    ),
    Host("effort dropped", "bf16-gguf", "llama.cpp", "effort dropped", "effort", FrontSettings(effort_honored=False)),
    Host(
        "template chatml",
        "bf16-gguf",
        "llama.cpp",
        "template: chatml",
        "template",
        FrontSettings(chat_template="chatml"),
    ),
    Host(
        "template final-only",
        "bf16-gguf",
        "llama.cpp",
        "template: final-only",
        "template",
        FrontSettings(chat_template="final-only"),
    ),
    Host(
        "template plain", "bf16-gguf", "llama.cpp", "template: plain", "template", FrontSettings(chat_template="plain")
    ),
    Host(
        "sampling dropped",
        "bf16-gguf",
        "llama.cpp",
        "sampling dropped",
        "sampling",
        FrontSettings(sampling_honored=False),
    ),
)
POWER_BUDGETS = {
    "weights": (2, 3, 4, 8),
    "effort": (18, 21, 24, 36),
    "template": (4, 6, 8, 16),
    "sampling": (14, 20, 30, 40),
}


@contextlib.contextmanager
def served(host: Host, store):
    if store.find_variant(host.variant) is None:
        build(host.variant, store.root)
    with serve(host.variant, host.engine, store, options=ServeOptions(load=host.load), front=host.front) as server:
        yield server


def _verdicts(record) -> dict:
    weights = next((c for c in record.checks if c.name == "weights"), None)
    return {
        "verdicts": {c.name: c.verdict for c in record.checks},
        "p_values": {c.name: c.p_value for c in record.checks},
        "named": (weights.detail.get("named") if weights is not None else None),
        "queries": record.queries,
        "seconds": record.seconds,
    }


ANY_CHECK = "any check"  # the audit's own false alarm: a faithful endpoint failing at least one check


def _count_failures(failures: dict[str, int], record) -> None:
    for check in record.checks:
        failures[check.name] += check.verdict == "fail"
    failures[ANY_CHECK] += any(check.verdict == "fail" for check in record.checks)


def _rates(failures: dict[str, int], audits: int) -> dict:
    return {
        name: {"failed": count, "audits": audits, "ci95": list(statistics.wilson_interval(count, audits))}
        for name, count in failures.items()
    }


def bench_audit(
    artifacts="artifacts",
    audits: int = 20,
    repeats: int = 10,
    parts=("table", "false_positives", "power"),
    progress=None,
    checks: tuple[str, ...] = (),
) -> dict:
    """Runs the parts asked for (false positives: only ``checks``, when given; power: only their distortions);
    returns their results with the CPU, versions and timings."""

    store = as_store(artifacts)
    say = progress or (lambda message: None)
    started = time.monotonic()
    result: dict = {"cpu": _cpu(), "date": time.strftime("%Y-%m-%d"), "alpha": ALPHA}
    if "table" in parts:
        rows = []
        for host in FAITHFUL + DISTORTED:
            say(f"table: auditing {host.label}")
            with served(host, store) as server:
                record = audit(server.base_url, artifacts=store)
            rows.append({"server": host.label, "distortion": host.distortion, "check": host.check} | _verdicts(record))
        result["table"] = rows
    if "false_positives" in parts:
        rates = {}
        for host in FAITHFUL:
            failures = {name: 0 for name in (checks or CHECKS)} | {ANY_CHECK: 0}
            with served(host, store) as server:
                for seed in range(1, audits + 1):
                    say(f"false positives: {host.label}, audit {seed}/{audits}")
                    chosen = list(checks) if checks else None
                    _count_failures(failures, audit(server.base_url, seed=seed, artifacts=store, checks=chosen))
            rates[host.label] = _rates(failures, audits)
        result["false_positives"] = rates
    if "power" in parts:
        curves = []
        for host in DISTORTED:
            if checks and host.check not in checks:
                continue
            budgets = POWER_BUDGETS[host.check]
            with served(host, store) as server:
                points = []
                for budget in budgets:
                    failed = 0
                    for seed in range(100, 100 + repeats):
                        say(f"power: {host.label}, {budget} queries, audit {seed - 99}/{repeats}")
                        # detection rests on the reference's row alone: no candidates to load
                        record = audit(
                            server.base_url,
                            seed=seed,
                            budget=budget,
                            checks=[host.check],
                            artifacts=store,
                            candidates=[],
                        )
                        failed += record.checks[0].verdict == "fail"
                    points.append({"queries": budget, "detected": failed, "audits": repeats})
            needed = next((p["queries"] for p in points if p["detected"] / p["audits"] >= 0.8), None)
            curves.append(
                {"server": host.label, "check": host.check, "points": points, "queries_for_80_percent": needed}
            )
        result["power"] = curves
    if "calibrated" in parts:
        result["calibrated"] = _calibrated(store, audits, repeats, say)
    if "differential" in parts:
        result["differential"] = _differential(store, audits, say)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _calibrated(store, audits: int, repeats: int, say) -> dict:
    path = store.audit_calibration_path(store.subject(default_model()).name)
    saved = path.read_bytes() if path.is_file() else None
    try:
        say("calibrated: calibrating the weights check on bf16 through vLLM")
        with served(FAITHFUL[0], store) as server:
            audit(server.base_url, checks=["weights"], calibrate=True, seed=999, artifacts=store, candidates=[])
        threshold = None
        rows = []
        for host in FAITHFUL + tuple(h for h in DISTORTED if h.check == "weights"):
            runs = audits if not host.distortion else repeats
            failed = 0
            with served(host, store) as server:
                for seed in range(1, runs + 1):
                    say(f"calibrated: {host.label}, audit {seed}/{runs}")
                    record = audit(server.base_url, checks=["weights"], seed=seed, artifacts=store, candidates=[])
                    check = record.checks[0]
                    threshold = check.detail.get("threshold", threshold)
                    failed += check.verdict == "fail"
            rows.append(
                {
                    "server": host.label,
                    "distortion": host.distortion,
                    "failed": failed,
                    "audits": runs,
                    "ci95": list(statistics.wilson_interval(failed, runs)),
                }
            )
        return {"threshold": threshold, "source": "bf16 through vLLM (96 questions of its own)", "rows": rows}
    finally:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(saved)


def _differential(store, audits: int, say) -> dict:
    trusted_host, faithful = FAITHFUL
    # dated here: a partial run merged into docs/bench_audit.json must not redate the other parts
    out: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": _cpu(),
        "trusted": trusted_host.label,
        "audited": faithful.label,
    }
    with served(trusted_host, store) as trusted:
        against = {"artifacts": store, "reference_url": trusted.base_url}
        with served(faithful, store) as server:
            say(f"differential: {faithful.label} against {trusted_host.label}, before any calibration")
            first = audit(server.base_url, **against)
            out["uncalibrated"] = _verdicts(first) | {"weights_reason": first.checks[0].reason}
            say(f"differential: declaring {faithful.label} faithful (its own questions)")
            declared = audit(server.base_url, checks=["weights"], calibrate=True, seed=999, **against)
            out["calibration"] = {
                "prompts": declared.checks[0].detail.get("prompts"),
                "threshold_before": declared.checks[0].detail.get("threshold"),
            }
            failures = dict.fromkeys((*CHECKS, ANY_CHECK), 0)
            thresholds = set()
            for seed in range(1, audits + 1):
                say(f"differential false positives: {faithful.label}, audit {seed}/{audits}")
                record = audit(server.base_url, seed=seed, **against)
                thresholds.add(record.checks[0].detail.get("threshold"))
                _count_failures(failures, record)
            out["calibration"]["threshold"] = sorted(t for t in thresholds if t is not None)
            out["false_positives"] = _rates(failures, audits)
            out["check_alpha"] = record.check_alpha
        rows = []
        for host in DISTORTED:
            say(f"differential: {host.label} against {trusted_host.label}")
            with served(host, store) as server:
                record = audit(server.base_url, **against)
            rows.append({"server": host.label, "distortion": host.distortion, "check": host.check} | _verdicts(record))
        out["table"] = rows
        out["reference_queries_per_audit"] = record.reference_queries
    # the declared calibration belongs to that server's port, gone with it
    name = calibration_module.differential_name(record.reference, record.reference_endpoint or "")
    store.audit_calibration_path(name).unlink(missing_ok=True)
    return out


def save(result: dict, docs: Path = Path("docs")) -> list[Path]:
    """The results as docs/bench_audit.json (merged with earlier parts) and the power plot."""
    path = docs / "bench_audit.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    if "false_positives" in result and "false_positives" in merged:  # a partial run replaces its own checks
        for server, rates in result["false_positives"].items():
            merged["false_positives"].setdefault(server, {}).update(rates)
        result = result | {"false_positives": merged["false_positives"]}
    if "power" in result and "power" in merged:  # a partial power run replaces its own curves only
        fresh = {curve["server"] for curve in result["power"]}
        kept = [curve for curve in merged["power"] if curve["server"] not in fresh]
        result = result | {"power": sorted(kept + result["power"], key=lambda c: _DISTORTED_ORDER[c["server"]])}
    merged.update(result)
    path.write_text(json.dumps(merged, indent=1) + "\n")
    written = [path]
    if "power" in merged:
        written.append(_plot_power(merged, docs / "audit_power.png"))
    return written


_DISTORTED_ORDER = {host.label: i for i, host in enumerate(DISTORTED)}


def _plot_power(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for curve in result["power"]:
        x = [p["queries"] for p in curve["points"]]
        y = [p["detected"] / p["audits"] for p in curve["points"]]
        axis.plot(x, y, marker="o", label=f"{curve['server']} ({curve['check']})")
    repeats = result["power"][0]["points"][0]["audits"]
    axis.axhline(0.8, color="grey", linestyle="--", linewidth=1)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("queries spent by the check")
    axis.set_ylabel(f"share of {repeats} audits that fail it (power)")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(f"quantlab audit: power per distortion (level {result['alpha']}; {result['cpu']})", fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
