"""The same logit statistics with the variant run by another runtime: llama.cpp on its GGUF export, or an engine.

For a GGUF variant both are reported: the KL of quantlab's dequantized torch model from the baseline (the
format's share) and the KL of llama.cpp's logits for the exported file from the baseline (format plus runtime).
Their difference is the runtime's share: llama.cpp's kernels, e.g. activations quantized to Q8 for k-quant
dot products. A served variant is compared the same way from the prompt log-probabilities its server returns
(``quantlab.stages.measure.engine``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quantlab.runtimes.sessions import LlamaCppSession, Session, TransformersSession, compare_next_tokens
from quantlab.stages.measure.text import EvaluationText
from quantlab.token_statistics import logit_summaries


def session_statistics(baseline: Session, candidate: Session, text: EvaluationText, top_k: int | None = None):
    """Per token of ``text``'s rows (positions 1..n-1, padding left out): the candidate session's token
    statistics against the baseline session's, with the rows' answer and analysis masks beside them."""
    analysis_mask = text.analysis_mask if text.analysis_mask is not None else torch.zeros_like(text.answer_mask)
    lengths = [int(text.attention[row].sum()) for row in range(text.tokens.shape[0])]
    rows = [text.tokens[row, :n].tolist() for row, n in enumerate(lengths)]
    per_row = compare_next_tokens(baseline, candidate, rows, top_k)
    arrays = {key: np.concatenate([stats[key] for stats in per_row]) for key in per_row[0]}
    arrays["answer"] = np.concatenate([text.answer_mask[row, 1:n].numpy() for row, n in enumerate(lengths)])
    arrays["analysis"] = np.concatenate([analysis_mask[row, 1:n].numpy() for row, n in enumerate(lengths)])
    return arrays


def llama_cpp_logit_summary(baseline, gguf_path: Path, text: EvaluationText) -> dict:
    """The logit statistics of llama.cpp running ``gguf_path`` against the torch baseline over ``text``."""
    # a cache as long as the text's rows: a released context (131k positions for gpt-oss) would be gigabytes
    n_ctx = min(baseline.config.max_position_embeddings, max(256, text.tokens.shape[1]))
    with LlamaCppSession(gguf_path, n_ctx, seed=0, n_threads=torch.get_num_threads()) as llama_cpp:
        arrays = session_statistics(TransformersSession(baseline), llama_cpp, text)
        runtime = llama_cpp.describe()
    return logit_summaries(arrays) | {"runtime": runtime}


def runtime_share(torch_logits: dict, llama_cpp_logits: dict, runtime: str = "llama.cpp") -> dict:
    """Mean KLD and same-top rate through each runtime, and the difference (the runtime minus torch)."""
    name = runtime.replace(".", "_")
    share = {}
    for part in ("all_tokens", "answer_tokens", "response_tokens", "analysis_tokens"):
        if part not in torch_logits or part not in llama_cpp_logits:
            continue
        a, b = torch_logits[part], llama_cpp_logits[part]
        if not a.get("n"):
            continue
        share[part] = {
            "mean_kld_torch": a["kl_divergence"]["mean"],
            f"mean_kld_{name}": b["kl_divergence"]["mean"],
            "mean_kld_difference": b["kl_divergence"]["mean"] - a["kl_divergence"]["mean"],
            "same_top_torch": a["same_top"]["rate"],
            f"same_top_{name}": b["same_top"]["rate"],
        }
    return share
