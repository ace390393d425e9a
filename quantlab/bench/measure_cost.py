"""``quantlab bench measure``: the cost of ``quantlab measure`` against two plain forward passes.

The reference is what any comparison must pay: one forward pass of the baseline and one of the variant over
the same token batches, without hooks or hidden states. The ratio says what the per-expert, router and
hidden-state measurements add on top.
"""

from __future__ import annotations

import time

import torch

from quantlab.models.loading import load_model, resolve_model
from quantlab.stages.measure.run import measure_pair
from quantlab.stages.measure.text import evaluation_text
from quantlab.store import MODEL, as_store


def measure_cost(baseline, variant, text, batch_size: int = 8, repeats: int = 5) -> dict:
    def plain():
        with torch.no_grad():
            for start in range(0, text.tokens.shape[0], batch_size):
                tokens, attention = text.tokens[start : start + batch_size], text.attention[start : start + batch_size]
                baseline(tokens, attention_mask=attention)
                variant(tokens, attention_mask=attention)

    # Interleaved (plain, measure, plain, ...) so that slow drift of this shared VM hits both alike; best of each.
    plain()
    measure_pair(baseline, variant, text, batch_size)  # warm-up
    plain_times: list[float] = []
    measure_times: list[float] = []
    for _ in range(repeats):
        for fn, times in (
            (plain, plain_times),
            (lambda: measure_pair(baseline, variant, text, batch_size), measure_times),
        ):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    plain_s, measure_s = min(plain_times), min(measure_times)
    ratios = sorted(m / p for m, p in zip(measure_times, plain_times))
    return {
        "tokens": int(text.attention.sum()),
        "two_forward_passes_s": round(plain_s, 3),
        "measure_s": round(measure_s, 3),
        "ratio": round(measure_s / plain_s, 3),
        "ratio_per_pair_min_max": [round(ratios[0], 3), round(ratios[-1], 3)],
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
    }


def measure_variant_cost(variant: str, artifacts, tokens: int = 16384) -> dict:
    """``measure_cost`` of a built variant against its source model, on measure's default text."""

    store = as_store(artifacts)
    folder = store.variant(variant)
    baseline, tokenizer = load_model(resolve_model(store.manifest(folder)["model"]["source"]), dtype=torch.float32)
    model, _ = load_model(folder / MODEL, dtype=torch.float32)
    return measure_cost(baseline, model, evaluation_text(tokenizer, max_tokens=tokens))
