"""The logit statistics with the variant served by an engine, from the prompt log-probabilities its server returns.

An OpenAI-compatible server returns, per prompt position, the log-probabilities of its top-k tokens (and of the
token that follows), not its logits. KL(baseline ‖ served) then has an exact part over the returned tokens K and
an unknown tail. With ``p`` the baseline's full distribution and ``q`` the server's,

    KL = Σ_{i∈K} p_i log(p_i / q_i) + Σ_{i∉K} p_i log(p_i / q_i)  ≥  Σ_{i∈K} p_i log(p_i / q_i) + P log(P / Q),

where P = Σ_{i∉K} p_i and Q = 1 - Σ_{i∈K} q_i (the log-sum inequality; equality when the tail of q is
proportional to the tail of p). Servers return float32 log-probabilities, so Q, a difference of numbers near 1,
is known only to about 1e-6; the bound takes Q + 1e-6 (a larger Q, a smaller tail term: still a lower bound,
where Q itself would overstate a tail of 1e-7 by a factor of ten). ``kl`` below is that lower bound: exact
when K is the whole vocabulary (a server asked for every token, as quantlab asks for vocabularies up to 1024
tokens), and within the baseline mass outside K times the largest log-ratio there otherwise; ``tail_mass``
records P per position so a reader sees how much the bound could hide. The top token, the target token's
probability (Δp) and both NLLs are exact (the server returns the prompt token's log-probability beside its top-k).
"""

from __future__ import annotations

import numpy as np
import torch

from quantlab.models.loading import load_model
from quantlab.runtimes.engines import get_engine, max_logprobs
from quantlab.runtimes.serve import ServeOptions, serve
from quantlab.stages.measure.baseline import load_baseline
from quantlab.stages.measure.llama_cpp import runtime_share
from quantlab.stages.measure.text import EvaluationText, measurement_text
from quantlab.store import MODEL, ArtifactStore, atomic_write_text, content_key, record_json
from quantlab.token_statistics import TOKEN_STATISTICS, logit_summaries, topk_token_statistics


def engine_logit_summary(baseline, server, text: EvaluationText, top_k: int, concurrent: int = 8) -> dict:
    """The logit statistics of the served variant against the torch baseline over ``text``'s rows."""
    from concurrent.futures import ThreadPoolExecutor

    engine = get_engine(server.engine)
    per_token: dict[str, list] = {k: [] for k in (*TOKEN_STATISTICS, "tail_mass", "answer", "analysis")}
    analysis_mask = text.analysis_mask if text.analysis_mask is not None else torch.zeros_like(text.answer_mask)
    rows = [text.tokens[row, : int(text.attention[row].sum())] for row in range(text.tokens.shape[0])]
    # several rows in flight at once: the engine batches them, as it batches its users' requests
    pool = ThreadPoolExecutor(max_workers=concurrent)
    try:
        answers = list(pool.map(lambda ids: engine.prompt_logprobs(server, ids.tolist(), top_k), rows))
    finally:  # interrupted: the requests not yet sent are dropped, so that the server stops at once
        pool.shutdown(wait=False, cancel_futures=True)
    for row, (ids, served) in enumerate(zip(rows, answers)):
        n = len(ids)
        with torch.no_grad():
            ours = baseline(ids.unsqueeze(0)).logits[0]
        stats = topk_token_statistics(ours[:-1], served, ids[1:], top_k)
        for key, value in stats.items():
            per_token[key].append(value)
        per_token["answer"].append(text.answer_mask[row, 1:n].numpy())
        per_token["analysis"].append(analysis_mask[row, 1:n].numpy())
    arrays = {k: np.concatenate(v) for k, v in per_token.items()}
    summaries = logit_summaries(arrays)
    tail = arrays["tail_mass"]
    return {
        "logits": summaries,
        "top_k": top_k,
        "kl": "exact" if float(tail.max()) < 1e-12 else "lower bound (top-k)",
        "tail_mass": {"mean": float(tail.mean()), "max": float(tail.max())},
        "engine": server.engine,
    }


SCHEMA_VERSION = 1


def measure_served(
    store, folder, manifest: dict, torch_result: dict, engine: str, serve_options, top_k: int | None, force: bool
) -> dict:
    """The served variant's statistics on the same text and baseline as ``torch_result`` (its stored
    measurement), each engine's share beside the torch model's; stored as ``measure/<engine>.json``, reused
    while the measurement, the engine's version and the serving options are the same."""

    chosen, options = get_engine(engine), serve_options or ServeOptions()  # measure_variant checked the engine
    load = chosen.what_to_load(store, store.subject(str(folder)), options)
    asked_top_k = top_k
    top_k = top_k or max_logprobs(folder / MODEL, options)
    options = ServeOptions(dtype=options.dtype, load=options.load, max_logprobs=max(top_k, options.max_logprobs or 0))
    settings = {"engine": chosen.name, "engine_version": chosen.version(), "loaded": load.kind, "top_k": top_k}
    settings |= options.record()
    key = content_key({"measurement": torch_result["cache_key"], "engine": settings})
    path = ArtifactStore.engine_measurement_path(folder, chosen.name, options.dtype, asked_top_k)
    with ArtifactStore.lock(path):
        previous = None if force else ArtifactStore.cached(path, key)
        if previous is not None:
            return previous | {"cache_hit": True}
        settings_of = torch_result["settings"]
        _, tokenizer = load_model(folder / MODEL, dtype=torch.float32)
        baseline, _ = load_baseline(store, manifest, settings_of.get("baseline"))
        text = measurement_text(
            tokenizer, baseline, settings_of.get("text"), settings_of["tokens"], settings_of.get("n_ctx")
        )
        with serve(str(folder), chosen.name, store, options=options) as server:
            summary = engine_logit_summary(baseline, server, text, top_k)
            startup_s = server.startup_s
        record = {
            "schema_version": SCHEMA_VERSION,
            "cache_key": key,
            "variant": manifest["variant"],
            "settings": settings,
            **summary,
            "runtime_share": runtime_share(torch_result["logits"], summary["logits"], chosen.name),
            "server": {"startup_s": round(startup_s, 2), "log": str(server.log)},
        }
        atomic_write_text(path, record_json(record))
    return record | {"cache_hit": False}
