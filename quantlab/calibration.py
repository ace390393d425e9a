"""Calibration tokens for data-driven methods (gptq, imatrix): ``samples`` windows of ``sequence_length``.

Datasets: a plugin's text (``zoo:aime-style`` / ``zoo:gpqa-style``: the embedded model's own conversations,
validation split, packed one after another as in training), or ``file:<path>`` (any UTF-8 text file, e.g.
../shared/data/wikitext2/wiki.test.raw). The
text is tokenized once, cut into consecutive windows, and ``samples`` of them are drawn with ``seed``.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from quantlab.errors import UserError
from quantlab.plugins import registry


def calibration_text(dataset: str, approx_chars: int) -> str:
    texts = registry().calibration_texts
    if dataset in texts:
        return texts[dataset].text(approx_chars)
    if dataset.startswith("file:"):
        path = Path(dataset[5:]).expanduser()
        if not path.is_file():
            raise UserError(f"calibration dataset {dataset!r}: no such file")
        return path.read_text(encoding="utf-8", errors="replace")
    raise UserError(f"calibration dataset {dataset!r} is unknown; use {', '.join(texts)} or file:<path>")


def calibration_revision(dataset: str) -> int | None:
    """The revision of a built-in calibration text (part of a calibrated build's cache key), None for files."""

    text = registry().calibration_texts.get(dataset)
    return None if text is None else text.revision


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
