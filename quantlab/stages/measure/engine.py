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

from quantlab.models.loading import load_config_and_tokenizer
from quantlab.runtimes.engines import get_engine, max_logprobs
from quantlab.runtimes.serve import ServeOptions, serve
from quantlab.runtimes.sessions import ServedSession, TransformersSession
from quantlab.stages.measure.baseline import load_baseline
from quantlab.stages.measure.runtime_share import runtime_share, session_statistics
from quantlab.stages.measure.text import EvaluationText, measurement_text
from quantlab.store import MODEL, ArtifactStore, atomic_write_text, content_key, record_json
from quantlab.store.records import Measurement
from quantlab.token_statistics import logit_summaries


def engine_logit_summary(baseline, server, text: EvaluationText, top_k: int) -> dict:
    """The logit statistics of the served variant against the torch baseline over ``text``'s rows."""
    arrays = session_statistics(TransformersSession(baseline), ServedSession(server), text, top_k)
    tail = arrays.pop("tail_mass")
    return {
        "logits": logit_summaries(arrays),
        "top_k": top_k,
        "kl": "exact" if float(tail.max()) < 1e-12 else "lower bound (top-k)",
        "tail_mass": {"mean": float(tail.mean()), "max": float(tail.max())},
        "engine": server.engine,
    }


SCHEMA_VERSION = 1


def measure_served(
    store, folder, manifest: dict, torch_result: Measurement, engine: str, serve_options, top_k: int | None, force: bool
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
    key = content_key({"measurement": torch_result.cache_key, "engine": settings})
    path = ArtifactStore.engine_measurement_path(folder, chosen.name, options.dtype, asked_top_k)
    with ArtifactStore.lock(path):
        previous = None if force else ArtifactStore.cached(path, key)
        if previous is not None:
            return previous | {"cache_hit": True}
        settings_of = torch_result.settings
        _, tokenizer = load_config_and_tokenizer(folder / MODEL)  # the tokenizer only: the server holds the weights
        baseline, _ = load_baseline(store, manifest, settings_of.baseline)
        text = measurement_text(tokenizer, baseline, settings_of.text, settings_of.tokens, torch_result.n_ctx)
        with serve(str(folder), chosen.name, store, options=options) as server:
            summary = engine_logit_summary(baseline, server, text, top_k)
            startup_s = server.startup_s
        record = {
            "schema_version": SCHEMA_VERSION,
            "cache_key": key,
            "variant": manifest["variant"],
            "settings": settings,
            **summary,
            "runtime_share": runtime_share(torch_result.logits, summary["logits"], chosen.name),
            "server": {"startup_s": round(startup_s, 2), "log": str(server.log)},
        }
        atomic_write_text(path, record_json(record))
    return record | {"cache_hit": False}
