"""How far a faithful server's next-token distributions stray from the reference's: the weights check's null.

No engine reproduces the reference bit for bit: bf16 activations, fused kernels and batch-dependent reductions
move every log-probability a little. The weights check therefore asks not "is the KL zero" but "do more of the
endpoint's prompts exceed a faithful server's 99th percentile than a faithful server's own would": the threshold
is the ``rank``-th largest of ``size`` calibration values (rank = size / 100, rounded up), and the count of the
endpoint's prompts above it is tested exactly (``statistics.exceedance_p_value``: under the null both sets of
per-prompt KLs come from one distribution, so the test is a permutation test, exact whatever that distribution's
tail; an earlier binomial test against a 1% rate failed 10% of faithful vLLM audits, the sample percentile of 96
values being a noisy estimate of the true one).

Where it comes from, in order of preference:
* a faithful server audited with ``quantlab audit URL --calibrate`` (a server the user trusts: the provider's
  own reference deployment, or one the lab starts): its per-prompt KLs, stored beside the audits;
* otherwise the reference itself in bfloat16, in-process (transformers' kernels with bf16 activations), against
  float32: the rounding a bf16 engine adds, computed on the spot on prompts of its own. A stand-in, and a loose
  one (llama.cpp computes in float32 from bf16 weights and strays far less): the first real faithful server
  calibrated replaces it.
With several calibrated sources, the one whose threshold is largest (the noisiest faithful engine) is used.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from quantlab.chat import REASONING_EFFORTS
from quantlab.models.loading import load_model
from quantlab.runtimes.sessions import TransformersSession
from quantlab.store.atomic import atomic_write_text
from quantlab.store.records import Record
from quantlab.token_statistics import topk_pair_kl, topk_token_statistics

QUANTILE = 0.99  # the threshold: the calibration's 99th percentile, as an order statistic
CALIBRATION_PROMPTS = 96
CALIBRATION_SEED = 7_777  # questions of their own, never an audit's
IN_PROCESS = "transformers bfloat16 (in-process)"


class CalibrationRecord(Record):
    """``audits/calibration/<reference>.json``: read back through ``Record.from_json``, so that a damaged file
    is one line naming it."""

    kind: ClassVar[str] = "audit calibration"

    reference: str
    reference_key: str
    top_k: int
    kl_per_prompt: dict[str, list[float]]  # source -> per-prompt mean KL


@dataclass
class Calibration:
    """The source the weights check is tested against: its threshold, the order statistic it is (``rank``-th
    largest of ``size`` values), and every stored source's values."""

    threshold: float
    rank: int
    size: int
    source: str
    sources: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def of(cls, sources: dict[str, list[float]]) -> Calibration:
        def threshold(values: list[float]) -> tuple[float, int]:
            rank = max(1, math.ceil((1 - QUANTILE) * len(values)))
            return float(np.sort(np.asarray(values))[::-1][rank - 1]), rank

        source = max(sources, key=lambda name: threshold(sources[name])[0])
        value, rank = threshold(sources[source])
        return cls(value, rank, len(sources[source]), source, dict(sources))


def kl_of_tokens(model, prompt: str, ids: list[int], served: list[dict[int, float]]) -> float:
    """Mean top-k KL(model ‖ served) over the generated positions whose token the served top-k lists."""

    keep = [j for j in range(len(ids)) if ids[j] in served[j]]
    if not keep:
        return math.nan
    logits = model.next_token_logits(prompt, ids)
    top_k = max(len(entries) for entries in served)
    stats = topk_token_statistics(logits[keep], [served[j] for j in keep], torch.tensor([ids[j] for j in keep]), top_k)
    return float(stats["kl"].mean())


def tokens_and_served(model, answer) -> tuple[list[int], list[dict[int, float]]]:
    """A completion's generated token ids and, per position, its top log-probabilities by token id, read through
    the model's vocabulary (up to the first token whose text names no single id).

    A token the endpoint generated but left out of its listing is restored from the completion's text, its
    distribution unknown (``{}``: left out of every KL): llama-cpp-python skips every token equal to the GGUF's
    BOS, here ``<|start|>``, which opens each message after the first. Without the restored id the reference
    would be teacher-forced on a turn the endpoint never wrote, and every later position would differ."""
    by_text = model.token_ids_by_text
    text = answer.text
    offset: int | None = 0  # None: the text stopped matching the listing, which is then trusted
    ids: list[int] = []
    served: list[dict[int, float]] = []
    for token, top in zip(answer.tokens, answer.top_logprobs):
        if token not in by_text:
            break
        if offset is not None and not text.startswith(token, offset):
            left_out = _left_out(by_text, text, offset, token)
            if left_out is None:
                offset = None
            else:
                ids.append(by_text[left_out])
                served.append({})
                offset += len(left_out)
        ids.append(by_text[token])
        served.append({by_text[t]: float(lp) for t, lp in top.items() if t in by_text and lp is not None})
        if offset is not None:
            offset += len(token)
    return ids, served


def _left_out(by_text: dict[str, int], text: str, offset: int, listed: str) -> str | None:
    """The one token text that, at ``offset`` of the completion's text, stands between the listing's previous
    token and ``listed`` (None: none does, the text and the listing disagree otherwise)."""
    found = [t for t in by_text if t and text.startswith(t, offset) and text.startswith(listed, offset + len(t))]
    return max(found, key=len) if found else None


def pair_kl_per_prompt(model, reference_answer, served_answer) -> float:
    """The mean top-k KL(reference endpoint ‖ served endpoint) over the positions whose context both greedy
    continuations share: their common prefix and the first position after it (NaN: none maps to the model's
    vocabulary), a position either endpoint left out of its listing skipped."""
    ids, reference = tokens_and_served(model, reference_answer)
    served_ids, served = tokens_and_served(model, served_answer)
    common = next((j for j, (a, b) in enumerate(zip(ids, served_ids)) if a != b), min(len(ids), len(served_ids)))
    shared = [j for j in range(min(common + 1, len(ids), len(served_ids))) if reference[j] and served[j]]
    if not shared:
        return math.nan
    return float(np.mean([topk_pair_kl(reference[j], served[j]) for j in shared]))


def kl_per_prompt(model, prompts: list[str], answers) -> list[float]:
    """Per prompt: the mean top-k KL(model ‖ endpoint) along the tokens the endpoint generated (NaN: none)."""
    out = []
    for prompt, answer in zip(prompts, answers):
        ids, served = tokens_and_served(model, answer)
        out.append(kl_of_tokens(model, prompt, ids, served) if ids else math.nan)
    return out


@torch.no_grad()
def bf16_kl_per_prompt(reference, prompts: list[str], generated_tokens: int, top_k: int) -> list[float]:
    """Per prompt: KL(reference in float32 ‖ reference in bfloat16) along the float32 greedy continuation, the
    bf16 side known on its top-k only, as a server returns it."""

    bf16, _ = load_model(reference.folder, dtype=torch.bfloat16)
    in_bf16 = TransformersSession(bf16)
    tokenizer = reference.tokenizer
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    continuations = reference.model.generate(
        **batch,
        max_new_tokens=generated_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )[:, batch["input_ids"].shape[1] :].tolist()
    out = []
    for prompt, continuation in zip(prompts, continuations):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = [token for token in continuation if token != tokenizer.pad_token_id]
        sequence = prompt_ids + ids
        logits = in_bf16.logits(sequence)[len(prompt_ids) - 1 : len(sequence) - 1]
        log_q = torch.log_softmax(logits, dim=-1)
        values, indices = log_q.topk(top_k, dim=-1)
        served = [dict(zip(indices[j].tolist(), values[j].tolist())) for j in range(len(ids))]
        out.append(kl_of_tokens(reference, prompt, ids, served))
    return out


def load_or_compute(store, reference, reference_key: str, questions, top_k: int, generated_tokens: int) -> Calibration:
    """The stored calibration of ``reference`` (sources a user calibrated against), or the in-process bf16 one
    (computed now and stored)."""
    path = store.audit_calibration_path(reference.name)
    record = None
    if path.is_file():
        record = CalibrationRecord.from_json(path)
        if record.reference_key != reference_key:
            record = None  # the reference changed: its calibration with it
    if record is None:
        probes = questions(CALIBRATION_PROMPTS, CALIBRATION_SEED)
        prompts = [reference.prompt(p.messages, REASONING_EFFORTS[i % 3]) for i, p in enumerate(probes)]
        values = bf16_kl_per_prompt(reference, prompts, generated_tokens, top_k)
        record = CalibrationRecord(
            reference=reference.name,
            reference_key=reference_key,
            top_k=top_k,
            kl_per_prompt={IN_PROCESS: [v for v in values if not math.isnan(v)]},
        )
        save(path, record)
    return Calibration.of(record.kl_per_prompt)


def differential_name(reference_name: str, trusted_name: str) -> str:
    """The calibration a differential audit against ``trusted_name`` keeps (its own: the noise is that of hosts
    against that endpoint, not against the local reference)."""
    return f"{reference_name}--vs--" + re.sub(r"[^A-Za-z0-9.-]+", "-", trusted_name).strip("-")


def load_declared(store, name: str, reference_key: str) -> Calibration | None:
    """The sources declared faithful in calibration ``name`` (None: none yet)."""
    path = store.audit_calibration_path(name)
    if not path.is_file():
        return None
    record = CalibrationRecord.from_json(path)
    if record.reference_key != reference_key or not record.kl_per_prompt:
        return None
    return Calibration.of(record.kl_per_prompt)


def add_source(store, name: str, reference_key: str, source: str, values: list[float], top_k: int) -> None:
    """Adds a faithful server's per-prompt KLs to calibration ``name`` (``quantlab audit --calibrate``): the
    reference's, or a differential audit's against its trusted endpoint (``differential_name``)."""
    path = store.audit_calibration_path(name)
    record = CalibrationRecord.from_json(path) if path.is_file() else None
    if record is None or record.reference_key != reference_key:  # none yet, or the reference changed
        record = CalibrationRecord(reference=name, reference_key=reference_key, top_k=top_k, kl_per_prompt={})
    # a real faithful server replaces the in-process stand-in, which only emulates one
    record.kl_per_prompt.pop(IN_PROCESS, None)
    record.kl_per_prompt[source] = [v for v in values if not math.isnan(v)]
    save(path, record)


def save(path, record: CalibrationRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, record.model_dump_json(indent=1))
