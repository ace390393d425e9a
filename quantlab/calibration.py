"""Calibration tokens for data-driven methods (gptq, imatrix): ``samples`` windows of ``sequence_length``.

Datasets: ``zoo:aime-style`` / ``zoo:gpqa-style`` (the embedded model's own task text, validation split, both
effort levels), or ``file:<path>`` (any UTF-8 text file, e.g. ../shared/data/wikitext2/wiki.test.raw). The
text is tokenized once, cut into consecutive windows, and ``samples`` of them are drawn with ``seed``.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from quantlab.errors import UserError


def calibration_text(dataset: str, approx_chars: int) -> str:
    if dataset in ("zoo:aime-style", "zoo:gpqa-style"):
        from quantlab.zoo import tasks

        count = max(64, approx_chars // 40)
        texts = []
        for effort in ("high", "low"):
            if dataset == "zoo:aime-style":
                texts += [d["question"] + d["solution"] for d in tasks.aime_style_docs("validation", count, 0, effort)]
            else:
                texts += [d["question"] + d["choices"][d["answer"]] for d in tasks.gpqa_style_docs("validation", count, 0, effort)]
        return "<eos>".join(texts)
    if dataset.startswith("file:"):
        path = Path(dataset[5:]).expanduser()
        if not path.is_file():
            raise UserError(f"calibration dataset {dataset!r}: no such file")
        return path.read_text(encoding="utf-8", errors="replace")
    raise UserError(f"calibration dataset {dataset!r} is unknown; use zoo:aime-style, zoo:gpqa-style or file:<path>")


def calibration_tokens(calibration, tokenizer) -> torch.Tensor:
    """(samples, sequence_length) token ids, deterministic given the calibration spec."""
    length, samples = calibration.sequence_length, calibration.samples
    text = calibration_text(calibration.dataset, approx_chars=4 * length * samples)
    ids = tokenizer(text)["input_ids"]
    windows = len(ids) // length
    if windows < samples:
        raise UserError(
            f"calibration dataset {calibration.dataset!r} has {windows} windows of {length} tokens; "
            f"the recipe asks for {samples} samples: lower calibration.samples or give more text"
        )
    chosen = sorted(random.Random(calibration.seed).sample(range(windows), samples))
    return torch.tensor([ids[w * length : (w + 1) * length] for w in chosen], dtype=torch.long)
