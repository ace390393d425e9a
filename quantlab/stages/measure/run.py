"""One pass over an evaluation text, baseline and variant side by side, chunk by chunk.

Per chunk both models run once, their experts' forward replaced by one that keeps, per MoE layer, the
experts' input, the router's top-k choice and each routed expert output. From them: router agreement and
expert load; each expert's *isolated* output error (baseline and variant expert on the same baseline inputs,
over the tokens the baseline routes to it); the per-layer drift of the hidden states (the *in-context* error,
accumulated through the layers); and per predicted token the KL divergence, top-token agreement, llama.cpp's
Δp (of the target token), the change in the probability of the baseline's top token, and both NLLs. Only
per-token scalars and running sums outlive a chunk.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantlab.errors import UserError
from quantlab.methods.activations import activate
from quantlab.models.loading import float32_bytes, load_model, require_memory
from quantlab.runtimes.engines import get_engine
from quantlab.runtimes.serve import ServeOptions
from quantlab.stages.measure.baseline import load_baseline
from quantlab.stages.measure.engine import measure_served
from quantlab.stages.measure.outputs import expert_weight_errors, write_measurement
from quantlab.stages.measure.runtime_share import llama_cpp_logit_summary, runtime_share
from quantlab.stages.measure.text import LLAMA_PERPLEXITY, SCORINGS, EvaluationText, measurement_text
from quantlab.store import GGUF, MODEL, ArtifactStore, as_store, content_key, read_json, sha256_file
from quantlab.store.records import Measurement
from quantlab.token_statistics import TOKEN_STATISTICS, logit_summaries, token_statistics


def routed_expert_outputs(experts, x: torch.Tensor, indices: torch.Tensor):
    """(outputs, expert ids, order) of every (token, chosen expert) pair of ``indices`` (tokens, k), sorted by
    expert (``order`` indexes the flattened pairs), in one grouped matrix multiplication per projection (as
    transformers' own MoE forward does), not a loop over experts."""
    n_experts = experts.gate_up_proj.shape[0]
    expert_ids = indices.reshape(-1)
    order = torch.argsort(expert_ids, stable=True)
    expert_ids = expert_ids[order]
    rows = x[torch.div(order, indices.shape[1], rounding_mode="floor")].to(experts.gate_up_proj.dtype)
    offsets = torch.bincount(expert_ids, minlength=n_experts).cumsum(0).to(torch.int32)
    grouped = torch.nn.functional.grouped_mm
    if hasattr(experts, "gate_up_proj_bias"):  # gpt-oss: weights (experts, in, out), biases
        hidden = activate(
            experts, grouped(rows, experts.gate_up_proj, offs=offsets) + experts.gate_up_proj_bias[expert_ids]
        )
        return grouped(hidden, experts.down_proj, offs=offsets) + experts.down_proj_bias[expert_ids], expert_ids, order
    hidden = activate(experts, grouped(rows, experts.gate_up_proj.transpose(1, 2), offs=offsets))
    return grouped(hidden, experts.down_proj.transpose(1, 2), offs=offsets), expert_ids, order


def _moe_layers(model) -> list[tuple[int, Any]]:
    """(layer index, mlp module) of every MoE layer (one with experts and a top-k router, not a dense gate)."""
    layers = []
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        router = getattr(mlp, "router", None) or getattr(mlp, "gate", None)
        if hasattr(mlp, "experts") and router is not None and not isinstance(router, torch.nn.Linear):
            layers.append((i, mlp))
    return layers


class _Capture:
    """Replaces each MoE layer's experts forward, for one model, by ``routed_expert_outputs`` (the arithmetic of
    transformers' grouped path) and keeps, per chunk, what it was given and what it computed: the experts'
    inputs, the router's top-k indices, and each routed pair's output. The baseline's own pass thus supplies
    the reference of the isolated error; the variant runs the same arithmetic, so an identical variant gives
    identical logits (transformers' own path sums in a different order)."""

    def __init__(self, model):
        self.inputs: dict[int, torch.Tensor] = {}
        self.indices: dict[int, torch.Tensor] = {}
        self.expert_outputs: dict[int, torch.Tensor] = {}  # sorted by expert, as routed_expert_outputs orders them
        self.patched = []
        for i, mlp in _moe_layers(model):
            self.patched.append(mlp.experts)
            mlp.experts.forward = self._experts_forward(i, mlp.experts)

    def _experts_forward(self, i, experts):
        def forward(hidden_states, indices, weights):  # hidden_states (tokens, hidden), indices best first
            outputs, ids, order = routed_expert_outputs(experts, hidden_states, indices)
            self.inputs[i], self.indices[i] = hidden_states.detach(), indices.detach()
            self.expert_outputs[i] = outputs
            tokens = torch.div(order, indices.shape[1], rounding_mode="floor")
            weighted = outputs * weights.reshape(-1)[order].unsqueeze(-1).to(outputs.dtype)
            return torch.zeros_like(hidden_states).index_add_(0, tokens, weighted.to(hidden_states.dtype))

        return forward

    def close(self):
        for experts in self.patched:
            del experts.forward  # back to the class's own forward


@dataclass
class _Accumulator:
    experts: int
    # per expert: tokens routed to it in the baseline and the variant, its squared output error and reference
    tokens_base: np.ndarray = field(init=False)
    tokens_variant: np.ndarray = field(init=False)
    error_squared: np.ndarray = field(init=False)
    reference_squared: np.ndarray = field(init=False)
    jaccard: list = field(default_factory=list)
    exact: int = 0
    top1_flips: int = 0
    routed_tokens: int = 0
    hidden_cosine: list = field(default_factory=list)
    hidden_error_squared: float = 0.0
    hidden_reference_squared: float = 0.0

    def __post_init__(self) -> None:
        self.tokens_base = np.zeros(self.experts, dtype=np.int64)
        self.tokens_variant = np.zeros(self.experts, dtype=np.int64)
        self.error_squared = np.zeros(self.experts)
        self.reference_squared = np.zeros(self.experts)


def _router_agreement(base: torch.Tensor, variant: torch.Tensor, experts: int, acc: _Accumulator) -> None:
    one_hot_base = torch.nn.functional.one_hot(base, experts).sum(1).bool()
    one_hot_variant = torch.nn.functional.one_hot(variant, experts).sum(1).bool()
    intersection = (one_hot_base & one_hot_variant).sum(1).double()
    union = (one_hot_base | one_hot_variant).sum(1).double()
    acc.jaccard.append((intersection / union).numpy())
    acc.exact += int((one_hot_base == one_hot_variant).all(1).sum())
    acc.top1_flips += int((base[:, 0] != variant[:, 0]).sum())
    acc.routed_tokens += base.shape[0]
    acc.tokens_base += one_hot_base.sum(0).numpy()
    acc.tokens_variant += one_hot_variant.sum(0).numpy()


def measure_pair(baseline, variant, text: EvaluationText, batch_size: int = 8) -> dict:
    """Everything ``quantlab measure`` reports for one variant against one baseline."""
    started = time.perf_counter()
    layers = _moe_layers(baseline)
    variant_layers = dict(_moe_layers(variant))
    experts = {i: mlp.experts.gate_up_proj.shape[0] for i, mlp in layers}
    accumulators = {i: _Accumulator(experts[i]) for i, _ in layers}
    per_token: dict[str, list] = {k: [] for k in (*TOKEN_STATISTICS, "answer", "analysis", "row")}
    analysis_mask = text.analysis_mask if text.analysis_mask is not None else torch.zeros_like(text.answer_mask)
    capture_base, capture_variant = _Capture(baseline), _Capture(variant)
    forward_s = 0.0
    try:
        with torch.no_grad():
            for start in range(0, text.tokens.shape[0], batch_size):
                tokens = text.tokens[start : start + batch_size]
                attention = text.attention[start : start + batch_size]
                t0 = time.perf_counter()
                base_out = baseline(tokens, attention_mask=attention, output_hidden_states=True)
                variant_out = variant(tokens, attention_mask=attention, output_hidden_states=True)
                forward_s += time.perf_counter() - t0
                predicted = attention[:, 1:].reshape(-1).bool()  # the target is a real token
                vocab = base_out.logits.shape[-1]
                stats = token_statistics(
                    base_out.logits[:, :-1].reshape(-1, vocab)[predicted],
                    variant_out.logits[:, :-1].reshape(-1, vocab)[predicted],
                    tokens[:, 1:].reshape(-1)[predicted],
                )
                for key, value in stats.items():
                    per_token[key].append(value)
                for part, mask in (("answer", text.answer_mask), ("analysis", analysis_mask)):
                    per_token[part].append(mask[start : start + batch_size, 1:].reshape(-1)[predicted].numpy())
                rows = torch.arange(start, start + tokens.shape[0]).repeat_interleave(tokens.shape[1] - 1)
                per_token["row"].append(rows[predicted].numpy())
                real = attention.reshape(-1).bool()
                for i, _ in layers:
                    acc = accumulators[i]
                    base_idx, variant_idx = capture_base.indices[i][real], capture_variant.indices[i][real]
                    _router_agreement(base_idx, variant_idx, experts[i], acc)
                    # The variant's experts on the baseline's inputs and routing; the baseline's outputs for
                    # the same pairs come from its own pass (padding tokens dropped from both).
                    all_indices = capture_base.indices[i]
                    approx, ids, order = routed_expert_outputs(
                        variant_layers[i].experts, capture_base.inputs[i], all_indices
                    )
                    reference = capture_base.expert_outputs[i]  # same indices, same (stable) order
                    keep = real[torch.div(order, all_indices.shape[1], rounding_mode="floor")]
                    approx, reference, ids = approx[keep], reference[keep], ids[keep]
                    error = ((approx.double() - reference.double()) ** 2).sum(-1)
                    acc.error_squared += torch.zeros(experts[i], dtype=torch.float64).index_add_(0, ids, error).numpy()
                    acc.reference_squared += (
                        torch.zeros(experts[i], dtype=torch.float64)
                        .index_add_(0, ids, (reference.double() ** 2).sum(-1))
                        .numpy()
                    )
                    width = base_out.hidden_states[i + 1].shape[-1]
                    h_base = base_out.hidden_states[i + 1].double().reshape(-1, width)[real]
                    h_variant = variant_out.hidden_states[i + 1].double().reshape(-1, width)[real]
                    acc.hidden_cosine.append(torch.nn.functional.cosine_similarity(h_base, h_variant, dim=-1).numpy())
                    acc.hidden_error_squared += float(((h_variant - h_base) ** 2).sum())
                    acc.hidden_reference_squared += float((h_base**2).sum())
    finally:
        capture_base.close()
        capture_variant.close()
    arrays = {k: np.concatenate(v) for k, v in per_token.items()}
    arrays["response"] = arrays["answer"].astype(bool) | arrays["analysis"].astype(bool)
    result = {
        "text": text.name,
        "rows": int(text.tokens.shape[0]),
        "tokens": int(text.attention.sum()),
        "predicted_tokens": int(arrays["kl"].size),
        "answer_tokens": int(arrays["answer"].sum()),
        "analysis_tokens": int(arrays["analysis"].sum()),
        "response_tokens": int(arrays["response"].sum()),
        "logits": logit_summaries(arrays),
        "layers": [_layer_summary(i, accumulators[i]) for i, _ in layers],
        "response_tokens_per_row": _per_row(arrays, int(text.tokens.shape[0])),
        "seconds": {"total": round(time.perf_counter() - started, 3), "forward_passes": round(forward_s, 3)},
    }
    return result


def _per_row(arrays: dict, rows: int) -> dict[str, list]:
    """Response-token sums per row (one problem per row on task text): what attribution resamples to put an
    interval on a share of the KL drift or of the NLL (rows, not tokens, are the independent units)."""
    answer = arrays["response"]
    row = arrays["row"][answer]

    def total(values):
        return np.bincount(row, weights=values[answer], minlength=rows).tolist()

    return {
        "tokens": np.bincount(row, minlength=rows).tolist(),
        "kl_sum": total(arrays["kl"]),
        "nll_base_sum": total(arrays["nll_base"]),
        "nll_variant_sum": total(arrays["nll_variant"]),
    }


def _layer_summary(index: int, acc: _Accumulator) -> dict:
    jaccard = np.concatenate(acc.jaccard)
    load_base = acc.tokens_base / acc.tokens_base.sum()
    load_variant = acc.tokens_variant / acc.tokens_variant.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(load_base > 0, load_base * np.log(load_base / load_variant), 0.0)
        isolated = np.where(acc.reference_squared > 0, np.sqrt(acc.error_squared / acc.reference_squared), np.nan)
    cosine = np.concatenate(acc.hidden_cosine)
    return {
        "layer": index,
        "router": {
            "tokens": acc.routed_tokens,
            "jaccard_mean": float(jaccard.mean()),
            "exact_set_rate": acc.exact / acc.routed_tokens,
            "top1_flip_rate": acc.top1_flips / acc.routed_tokens,
            "load_kl": float(terms.sum()),
        },
        "hidden_state": {
            "cosine_mean": float(cosine.mean()),
            "cosine_min": float(cosine.min()),
            "relative_error": float(np.sqrt(acc.hidden_error_squared / acc.hidden_reference_squared)),
        },
        "experts": [
            {
                "expert": e,
                "tokens_baseline": int(acc.tokens_base[e]),
                "tokens_variant": int(acc.tokens_variant[e]),
                "isolated_relative_error": None if np.isnan(isolated[e]) else float(isolated[e]),
            }
            for e in range(acc.experts)
        ],
    }


SCHEMA_VERSION = 1


def measure_variant(
    variant_ref: str,
    baseline_ref: str | None = None,
    text_file=None,
    max_tokens: int = 16384,
    artifacts=None,
    write: bool = True,
    force: bool = False,
    scoring: str = "rows",
    n_ctx: int | None = None,
    engine: str | None = None,
    serve_options=None,
    top_k: int | None = None,
) -> Measurement:
    """Loads a built variant and its baseline, measures, attaches weight errors, writes the outputs and returns the
    record. The stored one is returned instead (``cache_hit``) when variant, baseline, text and length are the same.
    ``scoring``: ``rows`` (one document per row, answer tokens marked) or ``llama-perplexity`` (a plain text in
    chunks of ``n_ctx`` tokens, the second half of each scored, as llama.cpp's tool; default n_ctx: the
    model's context, at most 512, the tool's default). ``engine``: also serve the variant through this engine and
    add its statistics from the prompt log-probabilities (``quantlab.stages.measure.engine``), ``top_k`` per
    position (default: the server's maximum), beside the torch model's."""

    store = as_store(artifacts)
    folder = store.variant(variant_ref)
    manifest = store.manifest(folder)
    if engine is not None:  # before any measuring: an engine that cannot serve the variant is one line at once
        chosen = get_engine(engine)
        chosen.launcher()
        chosen.what_to_load(store, store.subject(str(folder)), serve_options or ServeOptions())
    settings = _settings(store, manifest, baseline_ref, text_file, max_tokens)
    if scoring not in SCORINGS:
        raise UserError(f"--scoring {scoring!r}: choose one of {', '.join(SCORINGS)}")
    if scoring == LLAMA_PERPLEXITY:
        context = int(read_json(folder / MODEL / "config.json").get("max_position_embeddings", 512))
        n_ctx = n_ctx or min(512, context)
        if not 4 <= n_ctx <= context:
            raise UserError(f"--ctx {n_ctx}: give a chunk length from 4 to the model's context ({context})")
        if text_file is None:
            raise UserError(f"--scoring {LLAMA_PERPLEXITY} needs --text FILE (a plain text, e.g. wiki.test.raw)")
        settings |= {"scoring": scoring, "n_ctx": n_ctx}  # only then: earlier measurements keep their keys
    key = content_key({"variant": manifest["cache_key"], "settings": settings})
    stored = ArtifactStore.measurement_path(folder)
    with ArtifactStore.lock(stored) if write else contextlib.nullcontext():
        previous = ArtifactStore.cached(stored, key) if write and not force else None
        if previous is not None:
            measured = Measurement.from_dict(previous, stored).at(stored, cache_hit=True)
            return _with_engine(measured, store, folder, manifest, engine, serve_options, top_k, force)
        result = _measure(store, folder, manifest, baseline_ref, text_file, max_tokens, settings.get("n_ctx"))
        result = {
            "schema_version": SCHEMA_VERSION,
            "cache_key": key,
            "variant": manifest["variant"],
            "baseline": result.pop("baseline"),
            "variant_cache_key": manifest["cache_key"],
            "bits_per_weight": manifest["plan"]["average_bits_per_weight"],
            "settings": settings,
        } | result
        result["command"] = "quantlab " + " ".join(sys.argv[1:]) if sys.argv and "quantlab" in sys.argv[0] else None
        measured = Measurement.from_dict(result, stored).at(stored)
        if write:
            write_measurement(measured, stored.parent)
    return _with_engine(measured, store, folder, manifest, engine, serve_options, top_k, force)


def _with_engine(
    result: Measurement, store, folder: Path, manifest: dict, engine, serve_options, top_k, force: bool
) -> Measurement:
    if engine is None:
        return result
    if not get_engine(engine).speaks().prompt_logprobs_by_token_id:
        # llama-cpp-python's server returns prompt log-probabilities keyed by token text (control tokens all
        # decode to "") and aligned only after a BOS: the KL needs ids. Its server runs the same library as the
        # in-process runtime whose share measure already reports for every GGUF variant (measure_variant has
        # checked that this one has its GGUF).
        return result

    result.engine = measure_served(store, folder, manifest, result, engine, serve_options, top_k, force)
    return result


def _measure(
    store: ArtifactStore,
    folder: Path,
    manifest: dict,
    baseline_ref: str | None,
    text_file,
    max_tokens: int,
    llama_perplexity_ctx: int | None = None,
) -> dict:
    require_memory(  # the variant and its baseline side by side
        2 * float32_bytes(folder / MODEL),
        f"measuring {manifest['variant']} against its baseline",
        "evaluate its GGUF export with --backend llama.cpp (llama.cpp maps the file instead of loading it)",
    )
    variant, tokenizer = load_model(folder / MODEL, dtype=torch.float32)
    baseline, baseline_name = load_baseline(store, manifest, baseline_ref)
    if baseline.config.model_type != variant.config.model_type:
        raise UserError(
            f"baseline {baseline_name} ({baseline.config.model_type}) and variant ({variant.config.model_type}) differ"
        )
    text = measurement_text(tokenizer, baseline, text_file, max_tokens, llama_perplexity_ctx)
    result = {"baseline": baseline_name} | measure_pair(baseline, variant, text)
    weight_errors = expert_weight_errors(manifest)
    for layer in result["layers"]:
        for expert in layer["experts"]:
            expert["weight_error"] = weight_errors.get((layer["layer"], expert["expert"]), {})
    result["worst_expert"] = worst_expert(result)
    if (folder / GGUF).is_file():  # a GGUF variant: the same statistics with llama.cpp running it
        logits = llama_cpp_logit_summary(baseline, folder / GGUF, text)
        result["llama_cpp"] = {"logits": logits, "runtime_share": runtime_share(result["logits"], logits)}
    return result


def _settings(store: ArtifactStore, manifest: dict, baseline_ref, text_file, max_tokens: int) -> dict:
    """What a measurement depends on besides the variant: the baseline's identity, the text (with its file's
    hash), the length."""
    if baseline_ref is None:
        baseline_key = manifest["model"]["sha256"]
    else:
        baseline_key = store.manifest(store.variant(baseline_ref))["cache_key"]
    text = None if text_file is None else str(text_file)
    text_sha256 = sha256_file(Path(text)) if text and Path(text).is_file() else None
    return {
        "baseline": baseline_ref,
        "baseline_key": baseline_key,
        "text": text,
        "text_sha256": text_sha256,
        "tokens": max_tokens,
    }


def worst_expert(result: dict) -> dict | None:
    candidates = [
        (e["isolated_relative_error"], layer["layer"], e["expert"])
        for layer in result["layers"]
        for e in layer["experts"]
        if e["isolated_relative_error"] is not None
    ]
    if not candidates:
        return None
    error, layer, expert = max(candidates)
    if error == 0:
        return None  # every expert identical to the baseline's
    return {"layer": layer, "expert": expert, "isolated_relative_error": error}
