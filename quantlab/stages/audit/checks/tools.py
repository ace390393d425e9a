"""Tool calls, in the spirit of OpenAI's gpt-oss compatibility test: does the endpoint hand back the calls the
model makes, valid, and carry a tool's result back into the conversation?

Each question is asked ``ATTEMPTS`` times at temperature 1 with the model's function tools declared (the
plugin's ``ToolUse``). An attempt passes when the answer's ``tool_calls`` hold one call of a declared function
whose arguments are a JSON object the tool's schema accepts and whose result (the tool run here) is the
question's answer. pass@k is the share of questions with at least one passing attempt of k, pass^k the share
with all k passing (the compatibility test's two figures). Then one round trip per question: the endpoint's own
first valid call, the tool's result as a ``tool`` message, and the endpoint must answer it in its content.

The reference (the local model the weights look like, or the trusted endpoint) is asked the same, and the
endpoint fails when it passes fewer attempts and round trips than the reference (Fisher's exact test, one-sided).
A host that leaves the call in the content (harmony markers unparsed), drops the tools from the prompt, or
renders the tool's message in another shape fails here though its weights are the model's. Attempts of one
question are not independent, so the test is somewhat liberal where the model is unsure; it is not where the
model calls reliably, which is what it was trained to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from scipy import stats

from quantlab.chat import MODEL
from quantlab.plugins import Probe, ToolUse, registry
from quantlab.runtimes.chat_front import openai_tool_call
from quantlab.stages.audit.checks.base import CHAT, FAIL, NOT_APPLICABLE, PASS, Check, Context

ATTEMPTS = 4  # k of pass@k and pass^k
CALL_TOKENS = 64  # enough for a call of the reference's tools and a final answer after its result
EFFORT = "high"


@dataclass(frozen=True)
class Graded:
    """One attempt: whether its call is valid (a declared function, arguments its schema accepts) and correct
    (the tool's result is the answer), what is wrong otherwise, and the call as the chat API gives it back."""

    valid: bool
    correct: bool
    problem: str
    call: dict | None = None
    result: str | None = None  # the tool's answer to the call (None: it refused the arguments, or no call)


# JSON's types as Python reads them (a bool is an int to Python, not a number to JSON)
_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def _schema_problem(arguments: Any, schema: dict) -> str | None:
    """What is wrong with ``arguments`` for a JSON-schema object of flat typed properties (None: nothing)."""
    if not isinstance(arguments, dict):
        return "the arguments are not a JSON object"
    properties = schema.get("properties") or {}
    missing = [name for name in schema.get("required") or [] if name not in arguments]
    unknown = [name for name in arguments if name not in properties]
    if missing or unknown:
        return f"arguments missing {missing} or unknown {unknown}"
    for name, value in arguments.items():
        kind = properties[name].get("type")
        if kind in _JSON_TYPES and not _JSON_TYPES[kind](value):
            return f"argument {name!r} is not a {kind}"
    return None


def grade(message: dict, tool_use: ToolUse, answer: str) -> Graded:
    """An answer's message (the chat API's ``choices[0].message``) graded as a call for a question of ``answer``."""
    calls = message.get("tool_calls") or []
    if not calls:
        content = message.get("content") or ""
        left = "the call is left in the content" if "to=functions." in content else "no tool call"
        return Graded(False, False, left)
    if len(calls) != 1 or not isinstance(calls[0], dict):
        return Graded(False, False, f"{len(calls)} tool calls, one expected")
    function = calls[0].get("function") or {}
    declared = {tool["function"]["name"]: tool["function"] for tool in tool_use.tools}
    name = str(function.get("name"))
    if name not in declared:
        return Graded(False, False, f"a call of an undeclared function {name!r}")
    try:
        arguments = json.loads(function.get("arguments") or "")
    except (TypeError, ValueError):
        return Graded(False, False, "the arguments are not JSON")
    problem = _schema_problem(arguments, declared[name].get("parameters") or {})
    if problem is not None:
        return Graded(False, False, problem)
    try:
        result = tool_use.execute(name, arguments)
    except ValueError as error:
        return Graded(True, False, f"the tool refuses the arguments ({error})", calls[0])
    right = result.strip() == answer.strip()
    return Graded(True, right, "" if right else f"the call computes {result}, not {answer}", calls[0], result)


def round_trip(probe: Probe, call: dict, result: str) -> list[dict]:
    """The conversation after ``call``: the question, the assistant's call, the tool's ``result``."""
    call_id = call.get("id") or "call_0"
    return probe.messages + [
        {"role": "assistant", "content": None, "tool_calls": [call | {"id": call_id}]},
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]


def _pass_rates(correct: list[list[bool]]) -> dict[str, float]:
    n = len(correct)
    return {
        f"pass@{ATTEMPTS}": sum(any(row) for row in correct) / n,
        f"pass^{ATTEMPTS}": sum(all(row) for row in correct) / n,
        "attempts": sum(map(sum, correct)) / (n * ATTEMPTS),
    }


class ToolCalls(Check, name="tools"):
    runs_at = 55
    question = "Does the endpoint return the model's tool calls, valid, and answer a tool's result (pass@k, pass^k)?"
    default_budget = 20  # 4 questions, each 4 attempts and a round trip
    minimum_budget = ATTEMPTS + 1
    apis = (CHAT,)
    not_applicable = "tool calls come back parsed through the chat route only"

    def run(self, context: Context, budget: int):
        tool_use = registry().audit_tools
        if tool_use is None:
            return self.result(NOT_APPLICABLE, reason="no plugin declares tools the model calls")
        probes = context.probes(max(1, budget // (ATTEMPTS + 1)), offset=7)
        endpoint = _Side(self._endpoint_message(context, tool_use), tool_use, context.client.map)
        reference = _Side(
            self._reference_message(context, tool_use),
            tool_use,
            context.trusted.map if context.trusted is not None else _in_turn,
        )
        reference.ask(probes, context.seed)
        if not any(g.valid for row in reference.graded for g in row):
            return self.result(
                NOT_APPLICABLE,
                reason=f"the reference makes no valid call of {len(probes) * ATTEMPTS} attempts: the model calls no tools",
            )
        endpoint.ask(probes, context.seed)
        trials = len(probes) * (ATTEMPTS + 1)
        table = [[endpoint.passed, trials - endpoint.passed], [reference.passed, trials - reference.passed]]
        p_value = float(stats.fisher_exact(table, alternative="less").pvalue)
        failed = p_value < context.alpha
        invalid = [g.problem for row in endpoint.graded for g in row if not g.valid]
        rates = {"endpoint": endpoint.rates(), "reference": reference.rates()}
        return self.result(
            FAIL if failed else PASS,
            test=f"Fisher exact, one-sided: attempts and round trips passed, endpoint vs reference ({trials} each)",
            statistic=rates["endpoint"][f"pass^{ATTEMPTS}"],
            statistic_name=f"pass^{ATTEMPTS}",
            p_value=p_value,
            alpha=context.alpha,
            reason=(
                f"endpoint pass@{ATTEMPTS} {rates['endpoint'][f'pass@{ATTEMPTS}']:.0%}, pass^{ATTEMPTS} "
                f"{rates['endpoint'][f'pass^{ATTEMPTS}']:.0%}, valid calls {endpoint.valid}/{endpoint.attempts}, "
                f"round trips {endpoint.round_trips}/{len(probes)}; reference pass^{ATTEMPTS} "
                f"{rates['reference'][f'pass^{ATTEMPTS}']:.0%}, round trips {reference.round_trips}/{len(probes)}"
                + (f"; first invalid: {invalid[0]}" if invalid else "")
            ),
            detail={
                "questions": len(probes),
                "attempts": ATTEMPTS,
                "rates": rates,
                "valid_calls": {"endpoint": endpoint.valid, "reference": reference.valid},
                "round_trips": {"endpoint": endpoint.round_trips, "reference": reference.round_trips},
                "invalid": invalid[:5],
            },
        )

    @staticmethod
    def _endpoint_message(context: Context, tool_use: ToolUse):
        return _chat_asker(context.client, tool_use)

    @staticmethod
    def _reference_message(context: Context, tool_use: ToolUse):
        """The reference's answer in the chat API's shape: the trusted endpoint's own, or the local model's turn
        read as a chat host reads it (its harmony call as ``tool_calls``)."""
        if context.trusted is not None:
            return _chat_asker(context.trusted.client, tool_use)
        model = context.weights_model

        def ask_local(messages: list[dict], temperature: float = 0.0, seed: int = 0) -> dict:
            prompt = model.prompt(messages, EFFORT, MODEL, tools=tool_use.tools)
            turn = model.turns([prompt], CALL_TOKENS, temperature=temperature, seed=seed)[0]
            message: dict[str, Any] = {"role": "assistant", "content": turn.final}
            if turn.tool_calls:
                message["tool_calls"] = [openai_tool_call(call) for call in turn.tool_calls]
            return message

        return ask_local


def _chat_asker(client, tool_use: ToolUse):
    """A function asking ``client``'s chat route with the tools declared, giving back ``choices[0].message``."""

    def ask(messages: list[dict], **sampling) -> dict:
        answer = client.chat(
            messages, tools=tool_use.tools, reasoning_effort=EFFORT, max_tokens=CALL_TOKENS, **sampling
        )
        return answer.raw["choices"][0]["message"]

    return ask


def _in_turn(function, items: list) -> list:
    return [function(item) for item in items]


class _Side:
    """One side's attempts and round trips: asked (``map``: several in flight where the side is an endpoint),
    graded, counted."""

    def __init__(self, ask, tool_use: ToolUse, map_requests):
        self.ask_message, self.tool_use, self.map = ask, tool_use, map_requests
        self.graded: list[list[Graded]] = []
        self.round_trips = 0

    def ask(self, probes: list[Probe], seed: int) -> None:
        jobs = [(probe, seed * 1000 + i * ATTEMPTS + j) for i, probe in enumerate(probes) for j in range(ATTEMPTS)]
        messages = self.map(lambda job: self.ask_message(job[0].messages, temperature=1.0, seed=job[1]), jobs)
        graded = [grade(message, self.tool_use, probe.answer) for message, (probe, _) in zip(messages, jobs)]
        self.graded = [graded[i * ATTEMPTS : (i + 1) * ATTEMPTS] for i in range(len(probes))]
        # each question's first call the tool answers (valid); none: the round trip fails unasked
        answered = [next((g for g in row if g.call is not None and g.result is not None), None) for row in self.graded]
        trips = [(probe, g.call, g.result) for probe, g in zip(probes, answered) if g is not None]
        finals = self.map(lambda trip: self.ask_message(round_trip(*trip), temperature=0.0), trips)
        self.round_trips = sum(
            (final.get("content") or "").strip() == trip[0].answer for final, trip in zip(finals, trips)
        )

    @property
    def attempts(self) -> int:
        return sum(map(len, self.graded))

    @property
    def valid(self) -> int:
        return sum(g.valid for row in self.graded for g in row)

    @property
    def passed(self) -> int:
        return sum(g.correct for row in self.graded for g in row) + self.round_trips

    def rates(self) -> dict[str, float]:
        return _pass_rates([[g.correct for g in row] for row in self.graded])
