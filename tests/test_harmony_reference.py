"""The chat template against openai-harmony's own rendering (the reference renderer of gpt-oss's format), and
the tool-call grading of the audit's tool check, both by hand."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from quantlab.chat import harmony_reference
from quantlab.plugins import Probe, ToolUse
from quantlab.stages.audit.checks.tools import grade, round_trip
from quantlab.zoo import tasks

needs_harmony = pytest.mark.skipif(
    importlib.util.find_spec("openai_harmony") is None or harmony_reference.vocabulary_folder() is None,
    reason="openai-harmony or its o200k_base vocabulary (scripts/fetch_o200k.py) is not installed",
)


def _cases():
    problem = tasks.problems("test", 1)[0]
    return harmony_reference.standard_cases(
        problem.expression,
        str(problem.answer),
        "=".join(problem.steps()),
        tasks.CALCULATOR_TOOL,
        {"expression": problem.expression},
    )


@needs_harmony
def test_the_models_template_renders_every_case_as_openai_harmony_does():
    comparisons = harmony_reference.compare(tasks.chat_template(), _cases(), harmony_reference.REASONING_ONLY)
    assert len(comparisons) == 10
    for comparison in comparisons:
        assert comparison.first_difference is None, comparison.describe()


@needs_harmony
def test_the_comparison_finds_the_hugging_face_style_call_header():
    # gpt-oss's own Hugging Face template writes a call's content type as "json", not "<|constrain|>json": the
    # comparison must see that difference where the call is rendered, and nowhere else
    hf_style = tasks.chat_template().replace("<|channel|>commentary <|constrain|>json", "<|channel|>commentary json")
    assert hf_style != tasks.chat_template()
    comparisons = harmony_reference.compare(hf_style, _cases(), harmony_reference.REASONING_ONLY)
    differing = [c.case.name for c in comparisons if c.first_difference is not None]
    assert differing == ["a call and its result", "a call answered"]
    first = next(c for c in comparisons if c.first_difference is not None)
    assert first.template_text[first.first_difference :].startswith("json<|message|>")
    assert first.harmony_text[first.first_difference :].startswith("<|constrain|>json")


@needs_harmony
def test_gpt_oss_system_defaults_render_as_harmony_says():
    text = harmony_reference.harmony_text([{"role": "user", "content": "hi"}], "high", True)
    assert text.startswith(
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\n\nReasoning: high\n\n# Valid channels: analysis, commentary, final."
    )
    assert text.endswith("<|start|>user<|message|>hi<|end|><|start|>assistant")


def test_the_compact_ranks_expand_to_one_base64_token_and_rank_per_line():
    spec = importlib.util.spec_from_file_location(
        "fetch_o200k", Path(__file__).parent.parent / "scripts" / "fetch_o200k.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_o200k"] = module
    spec.loader.exec_module(module)
    # two runs: ranks 0-2 and 7-8, as js-tiktoken packs them (marker, first rank, tokens)
    assert module.ranks_file("! 0 IQ== Ig== Iw==\n! 7 JA== JQ==\n") == b"IQ== 0\nIg== 1\nIw== 2\nJA== 7\nJQ== 8\n"


CALCULATOR = ToolUse([tasks.CALCULATOR_TOOL], lambda name, arguments: str(tasks.calculate(arguments["expression"])))


def _message(name="calculator", arguments='{"expression": "2*3+1"}', content=None):
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}],
    }


@pytest.mark.parametrize(
    ("message", "valid", "correct", "problem"),
    [
        (_message(), True, True, ""),
        (_message(arguments='{"expression": "2*3"}'), True, False, "the call computes 6, not 7"),
        (_message(arguments='{"expression": "2*"}'), True, False, "the tool refuses"),
        (_message(arguments='{"expression": 7}'), False, False, "is not a string"),
        (_message(arguments='{"expr": "2*3+1"}'), False, False, "missing ['expression']"),
        (_message(arguments='{"expression": "2*3+1"'), False, False, "not JSON"),
        (_message(arguments='["2*3+1"]'), False, False, "not a JSON object"),
        (_message(name="search"), False, False, "undeclared function 'search'"),
        ({"role": "assistant", "content": "7"}, False, False, "no tool call"),
        (
            {
                "role": "assistant",
                "content": " to=functions.calculator<|channel|>commentary <|constrain|>json<|message|>{}",
            },
            False,
            False,
            "left in the content",
        ),
    ],
)
def test_a_call_is_graded_valid_and_correct_by_hand(message, valid, correct, problem):
    graded = grade(message, CALCULATOR, "7")
    assert (graded.valid, graded.correct) == (valid, correct)
    assert problem in graded.problem


def test_a_round_trip_answers_the_call_with_the_tools_result():
    call = _message()["tool_calls"][0]
    graded = grade(_message(), CALCULATOR, "7")
    assert graded.result == "7"
    messages = round_trip(Probe("2*3+1", "7"), call, graded.result)
    assert messages[-1] == {"role": "tool", "tool_call_id": "c", "content": "7"}
    assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == {"expression": "2*3+1"}


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs quantlab[gguf] (llama-cpp-python)")
@pytest.mark.parametrize("case", _cases(), ids=lambda case: case.name)
def test_llama_cpp_pythons_own_chat_route_renders_the_template_byte_for_byte(case):
    # llama-cpp-python's server renders a GGUF's template with its own Jinja environment, passing tools and its
    # chat_template_kwargs (the effort); it must give the prompt transformers gives
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from quantlab.chat import render

    formatter = Jinja2ChatFormatter(
        tasks.chat_template(), eos_token="<|return|>", bos_token="", add_generation_prompt=case.add_generation_prompt
    )
    extra = {} if case.effort is None else {"reasoning_effort": case.effort}
    theirs = formatter(messages=case.messages, tools=case.tools, **extra).prompt
    assert theirs == render(
        tasks.chat_template(), case.messages, case.effort, case.add_generation_prompt, tools=case.tools
    )
