"""Synthetic tasks the reference model is trained and scored on, as conversations in its chat format.

Every task is built on the same kind of problem: an integer expression such as ``47+8*6-9+3`` evaluated with the
usual precedence (products first, then left to right). The user's message is the expression; the assistant works
in the harmony-like format of ``chat_template.jinja``: its chain in the ``analysis`` channel, the answer in the
``final`` channel. How long the chain is depends on the reasoning effort the system message carries:

* ``high``: the whole chain, one operation per step (``47+48-9+3=95-9+3=86+3=89``);
* ``medium`` (the default): the first step only; the other three operations are done without writing them;
* ``low``: no analysis at all; the answer straight away.

A slip in any step changes the answer, so exact match on the final channel measures whether every step was right;
the less the model writes, the more it must do without writing, which is what makes effort matter.

* **AIME-style** (generative): exact match of the final channel's integer.
* **GPQA-style** (multiple choice): four complete assistant turns at high effort, one correct and three with a
  single slip carried through to the end, scored as lm-eval scores GPQA zero-shot (log-likelihood of each).
* **Tool use**: with the ``calculator`` function tool declared (``CALCULATOR_TOOL``), the assistant calls it in
  the commentary channel with the expression as JSON arguments (ended by ``<|call|>``), reads the result from
  the tool's message, and writes it in the final channel: harmony's tool-call protocol, which an audit checks
  as the gpt-oss compatibility test does (valid calls, pass@k, pass^k).

Splits are fixed by a hash of the expression, never by position in a stream, so train, validation and test are
disjoint by construction whatever seed or count is asked for.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from quantlab.chat import render as render_template

EFFORTS = ("low", "medium", "high")
DEFAULT_EFFORT = "medium"  # what the template writes when the request names none, as gpt-oss's does
SPLITS = ("train", "validation", "test")
OPERATORS = 4
# Per-mille of the question space each held-out split owns (selected by hash, so membership never depends on
# the order of generation). The rest is training data.
_HELD_OUT_PER_MILLE = {"test": range(0, 20), "validation": range(20, 40)}
# Split seeds are offset so that the default test stream is not the default validation stream.
_SPLIT_SEED_OFFSET = {"train": 0, "validation": 1_000_003, "test": 2_000_003}


@cache
def chat_template() -> str:
    """The reference model's chat template (shipped as its tokenizer's ``chat_template.jinja``)."""
    return (files("quantlab.zoo") / "chat_template.jinja").read_text()


@dataclass(frozen=True)
class Problem:
    """One integer expression: operands and operators, evaluated with products first."""

    operands: tuple[int, ...]
    operators: tuple[str, ...]

    @property
    def expression(self) -> str:
        return _render(list(self.operands), list(self.operators))

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
    """A problem with a two-digit first operand and four one-digit operands.

    Products only join one-digit operands (never the two-digit one, never twice in a row) and no intermediate
    value is negative: every step stays something a 7M-parameter model can learn exactly.
    """
    while True:
        operands = (rng.randint(10, 99),) + tuple(rng.randint(2, 9) for _ in range(OPERATORS))
        operators = tuple(rng.choice("+-*") for _ in range(OPERATORS))
        if operators[0] == "*" or any(a == b == "*" for a, b in zip(operators, operators[1:])):
            continue
        states = _reduction_states(operands, operators)
        if all(v >= 0 for values, _ in states for v in values):
            return Problem(operands, operators)


def analysis_text(steps: list[str], effort: str) -> str:
    """What the assistant writes in its analysis channel at ``effort``: all steps, the first, or nothing."""
    if effort not in EFFORTS:
        raise ValueError(f"effort must be one of {EFFORTS}, got {effort!r}")
    return "=".join(steps) if effort == "high" else steps[0] if effort == "medium" else ""


def user_message(problem: Problem) -> dict:
    return {"role": "user", "content": problem.expression}


def assistant_message(steps: list[str], effort: str) -> dict:
    """The assistant's turn: its analysis at ``effort`` (absent at low) and the final answer (the last step)."""
    thinking = analysis_text(steps, effort)
    return {"role": "assistant", "content": steps[-1]} | ({"thinking": thinking} if thinking else {})


def render(messages: list[dict], effort: str | None, add_generation_prompt: bool) -> str:
    """``messages`` in the reference model's chat format (``effort`` None: the template's default, medium)."""
    return render_template(chat_template(), messages, effort, add_generation_prompt)


def prompt_text(problem: Problem, effort: str | None) -> str:
    """The rendered prompt the model answers: system (effort), user (the expression), the assistant's turn opened."""
    return render([user_message(problem)], effort, add_generation_prompt=True)


def conversation_text(problem: Problem, effort: str) -> str:
    """A whole conversation at ``effort``, as the model is trained on it (the template's own rendering)."""
    return render([user_message(problem), assistant_message(problem.steps(), effort)], effort, False)


def response_text(problem: Problem, effort: str) -> str:
    """What the model should write after the prompt: the conversation minus the prompt."""
    prompt, whole = prompt_text(problem, effort), conversation_text(problem, effort)
    assert whole.startswith(prompt), "the template's generation prompt must open the assistant's turn"
    return whole[len(prompt) :]


def conversation_parts(problem: Problem, effort: str) -> tuple[tuple[str, str], ...]:
    """The conversation at ``effort`` as (role, text) parts for measurement: the analysis channel's chain
    (``analysis``), the final channel's answer (``answer``), and everything else (``context``)."""
    text = conversation_text(problem, effort)
    answer = str(problem.answer)
    pieces = [("answer", f"<|channel|>final<|message|>{answer}<|return|>", answer)]
    thinking = analysis_text(problem.steps(), effort)
    if thinking:
        pieces.insert(0, ("analysis", f"<|channel|>analysis<|message|>{thinking}<|end|>", thinking))
    parts, position = [], 0
    for role, marked, content in pieces:
        start = text.index(marked, position) + marked.index(content)
        parts += [("context", text[position:start]), (role, content)]
        position = start + len(content)
    parts.append(("context", text[position:]))
    return tuple((role, part) for role, part in parts if part)


CALCULATOR = "calculator"
CALCULATOR_TOOL = {
    "type": "function",
    "function": {
        "name": CALCULATOR,
        "description": "Evaluates an integer expression",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
_EXPRESSION = re.compile(r"\d+(?:[+*-]\d+)*")


def calculate(expression: object) -> int:
    """What the calculator tool answers: ``expression`` (digits and ``+ - *``) with products first."""
    if not isinstance(expression, str) or not _EXPRESSION.fullmatch(expression):
        raise ValueError(f"not an integer expression of + - *: {expression!r}")
    operands = tuple(int(number) for number in re.split(r"[+*-]", expression))
    operators = tuple(re.findall(r"[+*-]", expression))
    values, _ = _reduction_states(operands, operators)[-1]
    return values[0]


def tool_call_messages(problem: Problem) -> list[dict]:
    """A tool-use conversation as chat messages: the user's expression, the assistant's calculator call, the
    tool's result and the assistant's final answer. No analysis: the calculator does the work the chain would."""
    call = {"type": "function", "function": {"name": CALCULATOR, "arguments": {"expression": problem.expression}}}
    return [
        user_message(problem),
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": str(problem.answer)},
        {"role": "assistant", "content": str(problem.answer)},
    ]


def tool_conversation_text(problem: Problem, effort: str) -> str:
    """A whole tool-use conversation, rendered with the calculator declared, as the model is trained on it."""
    return render_template(chat_template(), tool_call_messages(problem), effort, False, tools=[CALCULATOR_TOOL])


def tool_prompt_text(problem: Problem, effort: str | None) -> str:
    """The prompt of a tool-use turn: the calculator declared, the user's expression, the assistant's turn opened."""
    return render_template(chat_template(), [user_message(problem)], effort, True, tools=[CALCULATOR_TOOL])


def _slipped_steps(problem: Problem, step: int, delta: int) -> list[str] | None:
    states = _reduction_states(problem.operands, problem.operators, slip=(step, delta))
    if any(v < 0 for values, _ in states for v in values):
        return None
    return [_render(values, ops) for values, ops in states[1:]]


_SLIP_SIZES = (-10, -2, -1, 1, 2, 10)


def multiple_choice_item(problem: Problem, rng: random.Random) -> dict:
    """A GPQA-style item: the user's expression and four whole assistant turns at high effort (one right, three
    with a single slip carried through), shuffled. Each choice is the text that follows the rendered prompt."""
    prompt = prompt_text(problem, "high")

    def turn(steps: list[str]) -> str:
        whole = render([user_message(problem), assistant_message(steps, "high")], "high", False)
        return whole[len(prompt) :]

    correct = turn(problem.steps())
    candidates = {
        turn(slipped)
        for step in range(len(problem.operators))
        for delta in _SLIP_SIZES
        if (slipped := _slipped_steps(problem, step, delta)) is not None
    }
    distractors = sorted(candidates - {correct})
    rng.shuffle(distractors)
    choices = [correct] + distractors[:3]
    order = list(range(4))
    rng.shuffle(order)
    return {"question": problem.expression, "choices": [choices[i] for i in order], "answer": order.index(0)}


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


def aime_style_docs(split: str = "test", count: int = 500, seed: int = 0) -> list[dict]:
    """AIME-style documents: ``question`` (the user's message), ``answer`` (an integer) and ``steps`` (the
    reference chain, from which each effort's assistant turn is made)."""
    return [{"question": p.expression, "answer": p.answer, "steps": p.steps()} for p in problems(split, count, seed)]


def gpqa_style_docs(split: str = "test", count: int = 500, seed: int = 0) -> list[dict]:
    """GPQA-style documents: ``question``, four ``choices`` (assistant turns) and the index of the right one."""
    rng = random.Random(seed + 7)
    return [multiple_choice_item(p, rng) for p in problems(split, count, seed)]


def effort_mix(low_effort_fraction: float, medium_effort_fraction: float) -> dict[str, float]:
    """The share of training conversations at each effort (high takes the rest)."""
    high = 1.0 - low_effort_fraction - medium_effort_fraction
    if min(low_effort_fraction, medium_effort_fraction, high) < 0:
        raise ValueError("the low and medium effort fractions must be non-negative and sum to at most 1")
    return {"low": low_effort_fraction, "medium": medium_effort_fraction, "high": high}


def training_conversations(seed: int, mix: dict[str, float], tool_fraction: float = 0.0):
    """An endless stream of rendered training conversations (train split only), each at an effort drawn from
    ``mix``, seeded; a ``tool_fraction`` share of them are tool-use conversations."""
    if not 0.0 <= tool_fraction <= 1.0:
        raise ValueError(f"the tool fraction must be within [0, 1], got {tool_fraction}")
    rng = random.Random(seed)
    efforts, weights = list(mix), list(mix.values())
    while True:
        p = random_problem(rng)
        if split_of(p) != "train":
            continue
        effort = rng.choices(efforts, weights)[0]
        # Drawn only when asked for, so that a stream without tool use is the one earlier checkpoints saw.
        if tool_fraction > 0 and rng.random() < tool_fraction:
            yield tool_conversation_text(p, effort)
        else:
            yield conversation_text(p, effort)
