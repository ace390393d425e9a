"""``quantlab bench audit --part causes``: does the audit name the cause of a departure it was never shown?

Held-out faults, built from recipes and chat templates the lab does not ship (written here, in a scratch folder,
never in ``recipes/``), each served by llama.cpp behind the chat front on 127.0.0.1 and audited once at the
default budget with the shipped variants as the only candidates. Each fault says what a correct answer is: the
fingerprint that must rank first and explain it, when the library has one (a template that hard-codes an effort
is the library's "effort fixed at ..."); "none of the known departures explains it" with the right kind of
departure ranked first, when it has not (a format or group size the store has no variant of, a rendering that
is none of the named ones). Rank-1 accuracy is the share of faults answered correctly.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from quantlab.bench.audit import DISTORTED, served
from quantlab.bench.serve import _cpu
from quantlab.chat import model_template
from quantlab.models.loading import default_model
from quantlab.runtimes.chat_front import FrontSettings
from quantlab.runtimes.serve import ServeOptions, serve
from quantlab.stages.audit import audit
from quantlab.stages.build import build
from quantlab.store import as_store

# the library the audit ranks against: the shipped variants (candidates) besides the reference's own bf16 GGUF
SHIPPED_CANDIDATES = ("mxfp4", "int4-rtn", "gguf-q4_k_m", "compactifai-like", "fp8")
SERVED_REFERENCE = "bf16-gguf"
# the shipped distortions llama.cpp serves (bench.audit's names, which are their fingerprints' names); the int4-rtn
# and compactifai-like hosts are vLLM's, whose CPU start takes minutes: their variants are candidates only
SHIPPED_DISTORTIONS = (
    "weights: mxfp4",
    "weights: gguf-q4_k_m",
    "effort dropped",
    "template: chatml",
    "template: final-only",
    "template: plain",
    "sampling dropped",
)


@dataclass(frozen=True)
class Fault:
    label: str
    kind: str  # the kind of departure that must rank first: weights, template, effort
    expected: str | None  # the fingerprint that must rank first and explain it; None: "none explains it"
    recipe: str = ""  # a recipe's YAML (a weights fault), served as its GGUF by llama.cpp
    template: str = ""  # a Jinja edit of the model's own template (a serving fault), applied by the chat front

    @property
    def variant(self) -> str:
        """The variant a recipe fault builds (its recipe's name, the YAML's first line)."""
        return self.recipe.split("\n", 1)[0].removeprefix("name: ")


def _recipe(name: str, groups: str, extra: str = "exports: [gguf]") -> str:
    return f"name: {name}\nmodel: zoo:tiny-gpt-oss\n{groups}\n{extra}\n"


FAULTS = (
    Fault(
        "int4 RTN, group 64 (experts and attention)",
        "weights",
        None,
        recipe=_recipe(
            "held-out-int4-g64",
            "groups:\n  - name: all\n    select: {component: [experts, attention]}\n"
            "    format: {name: int4, group_size: 64, symmetric: true}\n    method: rtn",
        ),
    ),
    Fault(
        "NVFP4 experts",
        "weights",
        None,
        recipe=_recipe(
            "held-out-nvfp4-experts",
            "groups:\n  - name: experts\n    select: {component: experts}\n    format: nvfp4",
        ),
    ),
    Fault(
        "fp8 attention (per-tensor)",
        "weights",
        None,
        recipe=_recipe(
            "held-out-fp8-attention",
            "groups:\n  - name: attention\n    select: {component: attention}\n"
            "    format: {name: fp8_e4m3, granularity: tensor}",
        ),
    ),
    Fault("GGUF Q3_K_M", "weights", None, recipe=_recipe("held-out-q3_k_m", "preset: gguf-q3_k_m")),
    Fault(
        "int8 asymmetric experts",
        "weights",
        None,
        recipe=_recipe(
            "held-out-int8-experts",
            "groups:\n  - name: experts\n    select: {component: experts}\n"
            "    format: {name: int8, group_size: 32, symmetric: false}\n    method: rtn",
        ),
    ),
    Fault(
        "int3 RTN experts, group 32",
        "weights",
        None,
        recipe=_recipe(
            "held-out-int3-experts",
            "groups:\n  - name: experts\n    select: {component: experts}\n"
            "    format: {name: int3, group_size: 32, symmetric: true}\n    method: rtn",
        ),
    ),
    Fault(
        "a template that hard-codes high effort",
        "effort",
        "effort fixed at high",
        template="hard-high",
    ),
    Fault(
        "a template that hard-codes low effort",
        "effort",
        "effort fixed at low",
        template="hard-low",
    ),
    Fault("a template that drops the system message", "template", None, template="no-system"),
    Fault(
        "a template that appends an instruction to the user's message",
        "template",
        None,
        template="instruction",
    ),
)


def held_out_template(edit: str, own: str) -> str:
    """The model's own template with one host's edit: an effort hard-coded, the system message dropped, or an
    instruction appended to every user message."""
    system = '{{- "<|start|>system<|message|>Reasoning: " + effort + "<|end|>" }}'
    user = '{{- "<|start|>user<|message|>" + message.content + "<|end|>" }}'
    if system not in own or user not in own:
        raise ValueError("the model's template is not the one these edits were written for")
    if edit in ("hard-high", "hard-low"):
        effort = edit.removeprefix("hard-")
        return own.replace(system, f'{{%- set effort = "{effort}" %}}\n' + system)
    if edit == "no-system":
        return own.replace(system, "")
    if edit == "instruction":
        return own.replace(user, '{{- "<|start|>user<|message|>" + message.content + " Think step by step.<|end|>" }}')
    raise ValueError(f"unknown template edit {edit!r}")


def correct(expected: str | None, kind: str, record) -> bool:
    """Whether the audit's ranking answers right: the ``expected`` fingerprint first and explaining it, or (None:
    a fault outside the library) nothing known explaining it, with the right ``kind`` of departure first."""
    if not record.causes:
        return False
    first = record.causes[0]
    if expected is not None:
        return first.name == expected and bool(first.explains)
    explained = first.known and bool(first.explains)
    return not explained and first.kind == kind


def bench_causes(artifacts, say) -> dict:
    """Every held-out fault served and audited once (seed 0, default budget), then every shipped distortion
    llama.cpp serves; the ranking's answer for each."""
    store = as_store(artifacts)
    out: dict = {"date": time.strftime("%Y-%m-%d"), "cpu": _cpu(), "candidates": list(SHIPPED_CANDIDATES)}
    for name in (SERVED_REFERENCE, *SHIPPED_CANDIDATES):
        if store.find_variant(name) is None:
            say(f"causes: building the shipped variant {name}")
            build(name, store.root)
    reference_folder = store.subject(default_model()).model_folder
    own = model_template(reference_folder) or ""
    rows = []
    with tempfile.TemporaryDirectory(prefix="quantlab-held-out-") as scratch:
        for fault in FAULTS:
            say(f"causes: {fault.label}")
            with _served_fault(fault, store, Path(scratch), own) as server:
                record = audit(server.base_url, artifacts=store, candidates=list(SHIPPED_CANDIDATES))
            rows.append(_row(fault.label, fault.expected, fault.kind, record))
    out["table"] = rows
    out["rank_1_correct"] = sum(row["correct"] for row in rows)
    out["faults"] = len(rows)
    out["detected"] = sum(bool(row["first"]) for row in rows)
    # the library's own departures (the shipped distortions llama.cpp serves): each must be named and explained
    library = []
    for host in DISTORTED:
        if host.distortion not in SHIPPED_DISTORTIONS:
            continue
        say(f"causes: the shipped distortion {host.label}")
        with served(host, store) as server:
            record = audit(server.base_url, artifacts=store, candidates=list(SHIPPED_CANDIDATES))
        library.append(_row(host.label, host.distortion, host.check, record))
    out["shipped"] = library
    return out


def _row(label: str, expected: str | None, kind: str, record) -> dict:
    first = record.causes[0] if record.causes else None
    return {
        "fault": label,
        "kind": kind,
        "expected": expected or "none explains it",
        "verdicts": {c.name: c.verdict for c in record.checks},
        "first": first.name if first else None,
        "first_explains": first.explains if first else None,
        "ranking": [c.name for c in record.causes[:4]],
        "cause": record.cause,
        "correct": correct(expected, kind, record),
        "seconds": record.seconds,
    }


@contextlib.contextmanager
def _served_fault(fault: Fault, store, scratch: Path, own_template: str):
    if fault.recipe:
        path = scratch / f"{fault.variant}.yaml"
        path.write_text(fault.recipe)
        variant = build(str(path), store.root).manifest.variant
        front = FrontSettings()
    else:
        variant = SERVED_REFERENCE
        path = scratch / f"{fault.template}.jinja"
        path.write_text(held_out_template(fault.template, own_template))
        front = FrontSettings(chat_template=str(path))
    with serve(variant, "llama.cpp", store, options=ServeOptions(), front=front) as server:
        yield server
