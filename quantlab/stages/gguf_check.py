"""The GGUF export's check: llama.cpp's logits for the written file against the variant's own (transformers).

For an F32 export the difference is the two runtimes' arithmetic alone; for quantized tensors it adds llama.cpp's
kernels (which may quantize activations, e.g. to Q8 for k-quant dot products): the runtime's share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quantlab.runtimes.sessions import LlamaCppSession, TransformersSession

# Prompts the logits comparison runs: the embedded model's chat format at high and low effort.
COMPARISON_PROMPTS = (
    "<|start|>system<|message|>Reasoning: high<|end|><|start|>user<|message|>47+8*6-9+3<|end|><|start|>assistant"
    "<|channel|>analysis<|message|>47+48-9+3=95-9+3=86+3=89<|end|><|start|>assistant<|channel|>final<|message|>89"
    "<|return|>",
    "<|start|>system<|message|>Reasoning: low<|end|><|start|>user<|message|>12+3*5-4+7<|end|><|start|>assistant",
)


def compare_logits(model, tokenizer, path: Path, prompts=COMPARISON_PROMPTS) -> dict:
    """How far llama.cpp's logits for the GGUF file are from the variant's own (transformers, float32): the
    relative L2 distance and the largest absolute difference over the prompts' positions."""

    n_ctx = min(model.config.max_position_embeddings, 512)  # the prompts are short; a 131k-token cache is not
    ours = TransformersSession(model.float())
    worst, squared_error, squared_norm, count = 0.0, 0.0, 0.0, 0
    with LlamaCppSession(path, n_ctx, seed=0, n_threads=torch.get_num_threads()) as llama_cpp:
        for prompt in prompts:
            ids = tokenizer(prompt)["input_ids"]
            # in numpy float64, summed as the check always summed them (the stored figures stay the same bytes)
            theirs = llama_cpp.logits(ids).numpy().astype(np.float64)
            own = ours.logits(ids).double().numpy()
            worst = max(worst, float(np.abs(theirs - own).max()))
            squared_error += float(((theirs - own) ** 2).sum())
            squared_norm += float((own**2).sum())
            count += len(ids)
        runtime = llama_cpp.describe()
    return {
        "tokens": count,
        "relative_l2": squared_error**0.5 / squared_norm**0.5,
        "max_abs": worst,
        "runtime": runtime,
    }
