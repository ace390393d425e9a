"""Synthetic tasks the reference model is trained and scored on.

Two tasks, both generated from a seed, both built on the same kind of problem: an integer expression such as
``47+8*6-9`` evaluated with the usual precedence (products first, then left to right).

* **AIME-style** (generative): the model writes a chain of thought that rewrites the expression one operation
  per step, then a final answer after ``####``. A slip in any step changes the final answer, so exact match on
  the answer measures whether every step was right, which is what makes long reasoning fragile.
* **GPQA-style** (multiple choice): four complete worked solutions, one correct and three with a single slip
  carried through to the end. Scored as lm-eval scores GPQA zero-shot: the log-likelihood of each option.

A reasoning-effort marker opens every prompt: ``effort:high`` asks for the full chain, ``effort:low`` for the
answer alone. Later experiments use it to reproduce an inference stack that ignores the requested effort.

Splits are fixed by a hash of the question text, never by position in a stream, so train, validation and test
are disjoint by construction whatever seed or count is asked for.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

EFFORTS = ("high", "low")
SPLITS = ("train", "validation", "test")
ANSWER_MARKER = "####"
# Per-mille of the question space each held-out split owns (selected by hash, so membership never depends on
# the order of generation). The rest is training data.
_HELD_OUT_PER_MILLE = {"test": range(0, 20), "validation": range(20, 40)}
# Split seeds are offset so that the default test stream is not the default validation stream.
_SPLIT_SEED_OFFSET = {"train": 0, "validation": 1_000_003, "test": 2_000_003}


@dataclass(frozen=True)
class Problem:
    """One integer expression: operands and operators, evaluated with products first."""

    operands: tuple[int, ...]
    operators: tuple[str, ...]

    @property
    def expression(self) -> str:
        parts = [str(self.operands[0])]
        for op, value in zip(self.operators, self.operands[1:]):
            parts += [op, str(value)]
        return "".join(parts)

    def steps(self) -> list[str]:
        """The chain of thought: the expression after each single operation, ending with the answer."""
        return [_render(values, ops) for values, ops in _reduction_states(self.operands, self.operators)[1:]]

    @property
    def answer(self) -> int:
        return int(self.steps()[-1])


def _render(values: list[int], ops: list[str]) -> str:
    parts = [str(values[0])]
    for op, value in zip(ops, values[1:]):
        parts += [op, str(value)]
    return "".join(parts)


def _apply(op: str, left: int, right: int) -> int:
    return left * right if op == "*" else left + right if op == "+" else left - right


def _next_operation(ops: list[str]) -> int:
    """Index of the operator evaluated next: the leftmost product, else the leftmost remaining operator."""
    return ops.index("*") if "*" in ops else 0


def _reduction_states(operands, operators, slip: tuple[int, int] | None = None) -> list[tuple[list[int], list[str]]]:
    """Every state of the expression from start to final value, one operation per step.

    ``slip=(step, delta)`` adds ``delta`` to the result of operation ``step`` and carries the wrong value on,
    which is how the multiple-choice distractors are made.
    """
    values, ops = list(operands), list(operators)
    states = [(list(values), list(ops))]
    step = 0
    while ops:
        i = _next_operation(ops)
        result = _apply(ops[i], values[i], values[i + 1])
        if slip is not None and slip[0] == step:
            result += slip[1]
        values[i : i + 2] = [result]
        del ops[i]
        states.append((list(values), list(ops)))
        step += 1
    return states


def random_problem(rng: random.Random) -> Problem:
    """A problem with a two-digit first operand and three one-digit operands.

    Products only join one-digit operands (never the two-digit one, never twice in a row) and no intermediate
    value is negative: every step stays something a 7M-parameter model can learn exactly.
    """
    while True:
        operands = (rng.randint(10, 99),) + tuple(rng.randint(2, 9) for _ in range(3))
        operators = tuple(rng.choice("+-*") for _ in range(3))
        if operators[0] == "*" or any(a == b == "*" for a, b in zip(operators, operators[1:])):
            continue
        states = _reduction_states(operands, operators)
        if all(v >= 0 for values, _ in states for v in values):
            return Problem(operands, operators)


def question_text(problem: Problem, effort: str = "high") -> str:
    """The prompt: effort marker, question, and the answer cue the model continues from."""
    if effort not in EFFORTS:
        raise ValueError(f"effort must be one of {EFFORTS}, got {effort!r}")
    return f"effort:{effort} Q:{problem.expression}=? A:"


def solution_text(problem: Problem, effort: str = "high") -> str:
    """The target continuation: the chain (high effort) or nothing (low effort), then the final answer."""
    chain = "=".join(problem.steps()) if effort == "high" else ""
    return f"{chain} {ANSWER_MARKER} {problem.answer}"


def _slipped_solution(problem: Problem, step: int, delta: int) -> str | None:
    states = _reduction_states(problem.operands, problem.operators, slip=(step, delta))
    if any(v < 0 for values, _ in states for v in values):
        return None
    chain = "=".join(_render(values, ops) for values, ops in states[1:])
    return f"{chain} {ANSWER_MARKER} {states[-1][0][0]}"


_SLIP_SIZES = (-10, -2, -1, 1, 2, 10)


def multiple_choice_item(problem: Problem, rng: random.Random, effort: str = "high") -> dict:
    """A GPQA-style item: the correct solution and three distinct single-slip distractors, shuffled."""
    correct = solution_text(problem, effort)
    n_steps = len(problem.operators)
    candidates = []
    for step in range(n_steps):
        for delta in _SLIP_SIZES:
            wrong = _slipped_solution(problem, step, delta)
            if wrong is not None:
                candidates.append(wrong if effort == "high" else f" {wrong.split(' ', 1)[1]}")
    distractors = sorted(set(candidates) - {correct})
    rng.shuffle(distractors)
    choices = [correct] + distractors[:3]
    order = list(range(4))
    rng.shuffle(order)
    return {
        "question": question_text(problem, effort),
        "choices": [choices[i] for i in order],
        "answer": order.index(0),
    }


def split_of(problem: Problem) -> str:
    """Which split a problem belongs to, from a hash of its expression alone."""
    digest = hashlib.sha256(problem.expression.encode()).digest()
    bucket = int.from_bytes(digest[:4], "big") % 1000
    for split, buckets in _HELD_OUT_PER_MILLE.items():
        if bucket in buckets:
            return split
    return "train"


def problems(split: str, count: int, seed: int = 0) -> list[Problem]:
    """The first ``count`` distinct problems of ``split`` in the stream seeded by ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(seed + _SPLIT_SEED_OFFSET[split])
    seen: set[str] = set()
    out: list[Problem] = []
    while len(out) < count:
        p = random_problem(rng)
        if p.expression not in seen and split_of(p) == split:
            seen.add(p.expression)
            out.append(p)
    return out


def aime_style_docs(split: str = "test", count: int = 500, seed: int = 0, effort: str = "high") -> list[dict]:
    """AIME-style documents: ``question`` (the prompt), ``answer`` (an integer) and the reference ``solution`` at
    the same effort (the chain, or at low effort the answer alone: what the model is trained to write)."""
    return [
        {"question": question_text(p, effort), "answer": p.answer, "solution": solution_text(p, effort)}
        for p in problems(split, count, seed)
    ]


def gpqa_style_docs(split: str = "test", count: int = 500, seed: int = 0, effort: str = "high") -> list[dict]:
    """GPQA-style documents: ``question``, four ``choices`` and the index of the correct one in ``answer``."""
    rng = random.Random(seed + 7)
    return [multiple_choice_item(p, rng, effort) for p in problems(split, count, seed)]


def training_texts(seed: int, low_effort_fraction: float = 0.25):
    """An endless stream of training texts (prompt + solution), train split only, seeded."""
    rng = random.Random(seed)
    while True:
        p = random_problem(rng)
        if split_of(p) != "train":
            continue
        effort = "low" if rng.random() < low_effort_fraction else "high"
        yield question_text(p, effort) + solution_text(p, effort)
