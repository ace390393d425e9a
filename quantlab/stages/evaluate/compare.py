"""Evaluations side by side: each subject on each task, and what changed against a baseline on the same items.

``evaluate_tasks`` is what ``quantlab eval`` and the demo run: one ``evaluate`` per subject and task, summarised
as a ``TaskScore`` row; with a baseline, each row also has the items that flipped (McNemar's exact test) and,
greedy, how many answers differ in text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantlab.errors import UserError
from quantlab.runtimes import runtime_label
from quantlab.stages.evaluate.run import evaluate
from quantlab.statistics import flips
from quantlab.store.records import Evaluation


@dataclass(frozen=True)
class TaskScore:
    """One subject's score on one task, as ``quantlab eval`` prints it; with a baseline, the change against it."""

    subject: str
    task: str
    metric: str
    score: float
    ci95: list[float]
    items: int
    repeats: int
    seeds: list[int]
    settings: dict[str, Any]
    cache_hit: bool
    against: str | None = None  # the baseline and its runtime
    flips: dict[str, Any] | None = None  # right->wrong, wrong->right, McNemar's p
    different_answers: int | None = None  # greedy: items whose answer text differs from the baseline's

    @classmethod
    def of(cls, result: Evaluation, reference: Evaluation | None = None) -> TaskScore:
        row = cls(
            subject=result.subject,
            task=result.task,
            metric=result.metric,
            score=result.score,
            ci95=result.ci95,
            items=result.items,
            repeats=result.repeats,
            seeds=result.seeds,
            settings=result.settings,
            cache_hit=result.cache_hit,
        )
        if reference is None:
            return row
        greedy = result.repeats == 1 == reference.repeats
        return dataclasses.replace(
            row,
            against=f"{reference.subject} on {runtime_label(reference.settings)}",
            flips=compare(reference, result),
            different_answers=different_answers(reference, result) if greedy else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The row as ``quantlab eval --json`` prints it: the baseline's parts only where there is one."""
        row = dict(self.__dict__)
        for name in ("against", "flips", "different_answers"):
            if row[name] is None:
                del row[name]
        return row


def different_answers(baseline: Evaluation, variant: Evaluation) -> int | None:
    """How many items' (first repeat's) generated answers differ in text between two evaluations of the same
    items; None for a log-likelihood task (its responses are scores, which no two runtimes share to the bit)."""
    pairs = list(zip(baseline.first_answers(), variant.first_answers()))
    if not all(isinstance(a, str) and isinstance(b, str) for a, b in pairs):
        return None
    return sum(a != b for a, b in pairs)


def compare(baseline: Evaluation, variant: Evaluation) -> dict:
    """Flips and McNemar's test of a variant against its baseline on the same task, items and settings."""
    if baseline.doc_ids != variant.doc_ids:
        raise UserError(f"{variant.task}: baseline and variant were evaluated on different items")
    return flips(np.array(baseline.correct), np.array(variant.correct))


def evaluate_tasks(
    subjects: list[str],
    tasks: list[str],
    baseline: str | None = None,
    data_files: dict | None = None,
    generation: dict | None = None,
    progress: Callable[[str], Any] | None = None,
    baseline_engine: str = "same",
    **options,
) -> list[TaskScore]:
    """Each subject on each task (``evaluate``'s options), summarised; with ``baseline``, each row also has the
    flips against it, McNemar's p and (greedy) how many answers differ in text. ``data_files`` / ``generation``:
    per task, as ``evaluate`` takes them. ``baseline_engine``: ``same`` (the baseline runs as the subjects do),
    ``transformers`` (in-process, as built), or an engine's name."""
    rows = []
    baseline_options = dict(options)
    if baseline_engine != "same":
        baseline_options["engine"] = None if baseline_engine == "transformers" else baseline_engine
    for task in tasks:
        per_task = {"data_file": (data_files or {}).get(task), "generation": (generation or {}).get(task)}
        reference = evaluate(baseline, task, **(baseline_options | per_task)) if baseline else None
        for subject in subjects:
            if progress:
                progress(f"evaluating {subject} on {task}")
            rows.append(TaskScore.of(evaluate(subject, task, **(options | per_task)), reference))
    return rows
