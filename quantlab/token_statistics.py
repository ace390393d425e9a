"""Statistics of one distribution of next tokens against another, per predicted position, and their summaries.

Pure functions (logits or log-probabilities in, arrays out): every comparison of a runtime against a reference
goes through them, whether the variant's full logits are known (``token_statistics``: transformers against
transformers, against llama.cpp) or only its top-k log-probabilities (``topk_token_statistics``: a served
engine, an audited endpoint).
"""

from __future__ import annotations

import numpy as np
import torch

from quantlab.errors import UserError
from quantlab.statistics import distribution, perplexity, rate

TOKEN_STATISTICS = ("kl", "same_top", "delta_p", "delta_p_top", "nll_base", "nll_variant")


def token_statistics(
    base_logits: torch.Tensor, variant_logits: torch.Tensor, targets: torch.Tensor
) -> dict[str, np.ndarray]:
    """Per predicted position: KL(base ‖ variant), same top token, both NLLs, and two probability changes:
    ``delta_p`` as llama-perplexity defines Δp (the *target* token's probability, variant minus baseline) and
    ``delta_p_top`` (the baseline's top token's probability, variant minus baseline)."""
    log_p = torch.log_softmax(base_logits.double(), dim=-1)
    log_q = torch.log_softmax(variant_logits.double(), dim=-1)
    p = log_p.exp()
    top = log_p.argmax(dim=-1, keepdim=True)
    target = targets.unsqueeze(-1)
    return {
        "kl": (p * (log_p - log_q)).sum(-1).numpy(),
        "same_top": (top.squeeze(-1) == log_q.argmax(dim=-1)).numpy(),
        "delta_p": (log_q.gather(-1, target).exp() - log_p.gather(-1, target).exp()).squeeze(-1).numpy(),
        "delta_p_top": (log_q.gather(-1, top).exp() - p.gather(-1, top)).squeeze(-1).numpy(),
        "nll_base": (-log_p.gather(-1, target)).squeeze(-1).numpy(),
        "nll_variant": (-log_q.gather(-1, target)).squeeze(-1).numpy(),
    }


SERVED_TAIL_RESOLUTION = 1e-6  # how well 1 - sum(top-k probabilities) is known from float32 log-probabilities


def topk_token_statistics(
    base_logits: torch.Tensor, served: list[dict[int, float]], targets: torch.Tensor, top_k: int
) -> dict[str, np.ndarray]:
    """Per predicted position: the statistics of ``token_statistics`` with the served distribution known only
    on the tokens ``served[j]`` lists (token id -> log-probability), the KL as its lower bound (module doc)."""
    log_p = torch.log_softmax(base_logits.double(), dim=-1).numpy()
    positions, vocabulary = log_p.shape
    p = np.exp(log_p)
    columns = {key: np.zeros(positions) for key in ("kl", "delta_p", "delta_p_top", "nll_variant", "tail_mass")}
    same_top = np.zeros(positions, dtype=bool)
    for j in range(positions):
        entries = served[j]
        ids = np.fromiter(entries.keys(), dtype=np.int64, count=len(entries))
        log_q = np.fromiter(entries.values(), dtype=np.float64, count=len(entries))
        if ids.size == 0 or ids.max() >= vocabulary:
            raise UserError(f"served log-probabilities name token ids outside the vocabulary ({vocabulary}) at {j}")
        q_known = float(np.exp(log_q).sum())
        tail_p = max(0.0, 1.0 - float(p[j, ids].sum()))
        tail_q = max(0.0, 1.0 - q_known) + SERVED_TAIL_RESOLUTION
        kl = float((p[j, ids] * (log_p[j, ids] - log_q)).sum())
        if tail_p > 1e-15:
            kl += tail_p * np.log(tail_p / tail_q)
        columns["kl"][j] = kl
        columns["tail_mass"][j] = tail_p
        target = int(targets[j])
        if target not in entries:
            raise UserError(f"the server returned no log-probability for the prompt's own token at position {j + 1}")
        columns["nll_variant"][j] = -entries[target]
        columns["delta_p"][j] = np.exp(entries[target]) - p[j, target]
        top = int(log_p[j].argmax())
        # the baseline's top token outside the top k: its served probability is at most the k-th largest
        kth = float(np.sort(log_q)[::-1][min(top_k, log_q.size) - 1])
        q_top = np.exp(entries[top]) if top in entries else float(np.exp(kth))
        columns["delta_p_top"][j] = q_top - p[j, top]
        same_top[j] = int(ids[log_q.argmax()]) == top
    nll_base = -log_p[np.arange(positions), targets.numpy()]
    return columns | {"same_top": same_top, "nll_base": nll_base}


def topk_pair_kl(reference: dict[int, float], served: dict[int, float]) -> float:
    """KL(reference ‖ served) when both sides are known only on their top-k (token id -> log-probability): the
    tokens both list kept apart, every other token merged into one outcome on each side. Merging outcomes never
    raises a KL (the data-processing inequality), so this is a lower bound on the true KL, zero when both sides
    return the same values."""
    shared = [token for token in reference if token in served]
    log_p = np.fromiter((reference[t] for t in shared), dtype=np.float64, count=len(shared))
    log_q = np.fromiter((served[t] for t in shared), dtype=np.float64, count=len(shared))
    p = np.exp(log_p)
    kl = float((p * (log_p - log_q)).sum())
    rest_p = max(0.0, 1.0 - float(p.sum()))
    rest_q = max(0.0, 1.0 - float(np.exp(log_q).sum())) + SERVED_TAIL_RESOLUTION
    if rest_p > 1e-15:
        kl += rest_p * np.log(rest_p / rest_q)
    return max(0.0, kl)


def logit_summaries(arrays: dict) -> dict:
    """The logit statistics over all predicted tokens, the answer tokens, the response tokens (what the model
    writes: its analysis and its answer) and, where the text marks them, the analysis channel's tokens."""
    answer, analysis = arrays["answer"].astype(bool), arrays["analysis"].astype(bool)
    summaries = {
        "all_tokens": _logit_summary(arrays, np.ones_like(answer)),
        "answer_tokens": _logit_summary(arrays, answer),
        "response_tokens": _logit_summary(arrays, answer | analysis),
    }
    if analysis.any():
        summaries["analysis_tokens"] = _logit_summary(arrays, analysis)
    return summaries


def _logit_summary(arrays: dict, mask: np.ndarray) -> dict:
    if not mask.any():
        return {"n": 0}
    base, variant = perplexity(arrays["nll_base"][mask]), perplexity(arrays["nll_variant"][mask])
    delta_p, delta_p_top = arrays["delta_p"][mask], arrays["delta_p_top"][mask]
    return {
        "n": int(mask.sum()),
        "perplexity_baseline": base,
        "perplexity_variant": variant,
        "perplexity_ratio": variant["ppl"] / base["ppl"],
        "kl_divergence": distribution(arrays["kl"][mask]),
        "same_top": rate(int(arrays["same_top"][mask].sum()), int(mask.sum())),
        "delta_p": distribution(delta_p) | {"rms": float(np.sqrt((delta_p**2).mean()))},  # llama-perplexity's Δp
        "delta_p_top": distribution(delta_p_top) | {"rms": float(np.sqrt((delta_p_top**2).mean()))},
    }
