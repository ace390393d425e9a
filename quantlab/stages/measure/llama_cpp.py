"""The same logit statistics with the variant run by llama.cpp (its GGUF export) instead of transformers.

For a GGUF variant both are reported: the KL of quantlab's dequantized torch model from the baseline (the
format's share) and the KL of llama.cpp's logits for the exported file from the baseline (format plus runtime).
Their difference is the runtime's share: llama.cpp's kernels, e.g. activations quantized to Q8 for k-quant
dot products.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quantlab.runtimes.llama_cpp import logits, open_gguf, version
from quantlab.stages.measure.text import EvaluationText
from quantlab.token_statistics import TOKEN_STATISTICS, logit_summaries, token_statistics


def llama_cpp_logit_summary(baseline, gguf_path: Path, text: EvaluationText) -> dict:
    # a cache as long as the text's rows: a released context (131k positions for gpt-oss) would be gigabytes
    n_ctx = min(baseline.config.max_position_embeddings, max(256, text.tokens.shape[1]))
    llm = open_gguf(gguf_path, n_ctx, seed=0, n_threads=torch.get_num_threads())
    per_token: dict[str, list] = {k: [] for k in (*TOKEN_STATISTICS, "answer", "analysis")}
    analysis_mask = text.analysis_mask if text.analysis_mask is not None else torch.zeros_like(text.answer_mask)
    try:
        for row in range(text.tokens.shape[0]):
            n = int(text.attention[row].sum())
            ids = text.tokens[row, :n]
            theirs = torch.from_numpy(logits(llm, ids.tolist()))
            with torch.no_grad():
                ours = baseline(ids.unsqueeze(0)).logits[0]
            stats = token_statistics(ours[:-1], theirs[:-1], ids[1:])
            for key, value in stats.items():
                per_token[key].append(value)
            per_token["answer"].append(text.answer_mask[row, 1:n].numpy())
            per_token["analysis"].append(analysis_mask[row, 1:n].numpy())
    finally:
        llm.close()
    arrays = {k: np.concatenate(v) for k, v in per_token.items()}
    return logit_summaries(arrays) | {"runtime": version()}


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
