"""The reference model's score card: one row per task, reasoning effort and chat template (greedy, test split)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from quantlab import chat
from quantlab.chat import harmony
from quantlab.statistics import wilson_interval
from quantlab.zoo import tasks
from quantlab.zoo.score import exact_match, final_answer, greedy_completions, multiple_choice_accuracy

SCORES_FILE = "scores.json"
DEFAULT = "default"  # the effort label of a request that names none (the template then writes medium)
# (task, effort, template) of every row: each effort with the model's template, and at high effort each of the
# wrong renderings a host makes (final-only has no place in the multiple-choice task, whose choices are turns that
# open with the analysis channel).
CARD = (
    [("aime-style", effort, chat.MODEL) for effort in (*tasks.EFFORTS, DEFAULT)]
    + [("aime-style", "high", template) for template in ("chatml", "final-only", "plain")]
    + [("gpqa-style", "high", template) for template in (chat.MODEL, "chatml", "plain")]
    + [("tool-use", "high", chat.MODEL)]
)
TOOL_TOKENS = 48  # a call of the longest expression, or a final answer after the tool's result


def _row(task: str, effort: str, template: str, correct: list[bool]) -> dict:
    k, n = sum(correct), len(correct)
    low, high = wilson_interval(k, n)
    return {
        "task": task,
        "effort": effort,
        "template": template,
        "score": k / n,
        "ci95": [round(low, 4), round(high, 4)],
        "correct": k,
        "n": n,
    }


def prompts(tokenizer, problems: list[tasks.Problem], effort: str, template: str) -> list[str]:
    """The prompts a host renders for ``problems`` with ``template`` at ``effort`` (``default``: none asked)."""
    source = chat.template_source(template, tokenizer.chat_template)
    asked = None if effort == DEFAULT else effort
    return [chat.render(source, [tasks.user_message(p)], asked) for p in problems]


def tool_use_correct(model, tokenizer, problems: list[tasks.Problem], effort: str) -> list[bool]:
    """Per problem, with the calculator declared: whether the greedy turn calls it with arguments whose value is
    the answer, and, given the tool's result, answers it in the final channel (a vocabulary without ``<|call|>``
    calls nothing)."""
    if "<|call|>" not in tokenizer.get_vocab():
        return [False] * len(problems)

    def prompt(messages: list[dict]) -> str:  # the checkpoint's own template, as every row of the card renders
        return chat.render(tokenizer.chat_template, messages, effort, True, tools=[tasks.CALCULATOR_TOOL])

    calls = greedy_completions(
        model, tokenizer, [prompt([tasks.user_message(p)]) for p in problems], TOOL_TOKENS, stop_at_call=True
    )
    called = []
    for problem, completion in zip(problems, calls):
        turn = harmony.split_turn(completion)
        right = False
        if turn.tool_calls and turn.tool_calls[0].function == tasks.CALCULATOR:
            try:
                right = tasks.calculate(json.loads(turn.tool_calls[0].arguments)["expression"]) == problem.answer
            except (ValueError, TypeError, KeyError):
                pass  # arguments that are not the calculator's: the call is wrong
        called.append(right)
    # the round trip: the right call answered by the tool, as every problem's conversation goes on
    trips = [prompt(tasks.tool_call_messages(p)[:3]) for p in problems]
    finals = greedy_completions(model, tokenizer, trips, TOOL_TOKENS)
    return [right and final_answer(f) == p.answer for right, f, p in zip(called, finals, problems)]


def score_reference_tasks(model, tokenizer, count: int = 500, seed: int = 0, split: str = "test") -> dict:
    """Scores on the first ``count`` items of a split: greedy, so the interval is over items only. Also whether
    the default effort gave the medium answers item for item."""
    started = time.perf_counter()
    problems = tasks.problems(split, count, seed)
    answers = [p.answer for p in problems]
    docs = tasks.gpqa_style_docs(split, count, seed)
    rows, per_item = [], {}
    for task, effort, template in CARD:
        rendered = prompts(tokenizer, problems, effort, template)
        if task == "tool-use":
            correct = tool_use_correct(model, tokenizer, problems, effort)
        elif task == "aime-style":
            _, correct = exact_match(model, tokenizer, rendered, answers)
        else:
            _, correct = multiple_choice_accuracy(model, tokenizer, rendered, docs)
        per_item[(task, effort, template)] = correct
        rows.append(_row(task, effort, template, correct))
    return {
        "split": split,
        "seed": seed,
        "decoding": "greedy",
        "rows": rows,
        "default_equals_medium": per_item[("aime-style", DEFAULT, chat.MODEL)]
        == per_item[("aime-style", "medium", chat.MODEL)],
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def record_scores(checkpoint: Path, scores: dict) -> None:
    """Writes ``scores.json`` into the checkpoint atomically (temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=".scores.", suffix=".tmp", dir=checkpoint)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(scores, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, checkpoint / SCORES_FILE)
