"""The reference model's score card: AIME-style exact match (both efforts) and GPQA-style accuracy."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from quantlab.statistics import wilson_interval
from quantlab.zoo import tasks
from quantlab.zoo.score import exact_match, multiple_choice_accuracy

SCORES_FILE = "scores.json"


def _entry(correct: list[bool]) -> dict:
    k, n = sum(correct), len(correct)
    low, high = wilson_interval(k, n)
    return {"accuracy": k / n, "correct": k, "n": n, "ci95": [round(low, 4), round(high, 4)]}


def score_reference_tasks(model, tokenizer, count: int = 500, seed: int = 0, split: str = "test") -> dict:
    """Scores on the first ``count`` items of a split: greedy, so the interval is over items only."""
    started = time.perf_counter()
    _, aime_high = exact_match(model, tokenizer, tasks.aime_style_docs(split, count, seed, "high"))
    _, aime_low = exact_match(model, tokenizer, tasks.aime_style_docs(split, count, seed, "low"))
    _, gpqa = multiple_choice_accuracy(model, tokenizer, tasks.gpqa_style_docs(split, count, seed, "high"))
    return {
        "split": split,
        "seed": seed,
        "decoding": "greedy",
        "aime_style_exact_match": {"high": _entry(aime_high), "low": _entry(aime_low)},
        "gpqa_style_accuracy": {"high": _entry(gpqa)},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def record_scores(checkpoint: Path, scores: dict) -> None:
    """Writes ``scores.json`` into the checkpoint atomically (temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=".scores.", suffix=".tmp", dir=checkpoint)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(scores, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, checkpoint / SCORES_FILE)
