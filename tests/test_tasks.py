"""The task generators and the chat format, checked against Python's own arithmetic (``eval`` of the expression
text) and against the format written out by hand."""

import itertools
import re

import pytest

from quantlab.zoo import tasks


def _value(expression: str) -> int:
    # Python's precedence (products first, then left to right) is exactly the rule the chains follow.
    assert re.fullmatch(r"[0-9+\-*]+", expression)
    return eval(expression)


_TURN = re.compile(
    r"(?:<\|channel\|>analysis<\|message\|>(?P<analysis>[^<]*)<\|end\|><\|start\|>assistant)?"
    r"<\|channel\|>final<\|message\|>(?P<final>-?\d+)<\|return\|>"
)


def _turn(response: str) -> tuple[list[str], int]:
    """(chain steps, final answer) of an assistant turn, parsed with a regex written from the format."""
    match = _TURN.fullmatch(response)
    assert match, response
    chain = match["analysis"]
    return (chain.split("=") if chain else []), int(match["final"])


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_answers_equal_independent_evaluation(seed):
    for doc, p in zip(tasks.aime_style_docs("test", 300, seed=seed), tasks.problems("test", 300, seed)):
        assert doc["answer"] == _value(doc["question"])
        steps, answer = _turn(tasks.response_text(p, "high"))
        assert answer == doc["answer"]
        # Every rewrite keeps the value and removes exactly one operator: one operation per step.
        operators = [len(re.findall(r"[+\-*]", e)) for e in [doc["question"]] + steps]
        assert operators == list(range(operators[0], -1, -1)) == [4, 3, 2, 1, 0]
        assert all(_value(step) == answer for step in steps)


def test_problem_shape_and_no_negative_intermediates():
    for p in tasks.problems("train", 2000, seed=3):
        assert 10 <= p.operands[0] <= 99 and all(2 <= v <= 9 for v in p.operands[1:])
        assert len(p.operators) == 4
        assert all(int(v) >= 0 for step in p.steps() for v in re.findall(r"\d+", step))
        assert "**" not in p.expression and not p.expression[2:].startswith("*")


def test_splits_are_disjoint_and_deterministic():
    test = {d["question"] for d in tasks.aime_style_docs("test", 500)}
    validation = {d["question"] for d in tasks.aime_style_docs("validation", 500)}
    assert len(test) == len(validation) == 500
    assert not test & validation
    user = re.compile(r"<\|start\|>user<\|message\|>([^<]*)<\|end\|>")
    stream = tasks.training_conversations(0, tasks.effort_mix(0.2, 0.3))
    training = {user.search(t).group(1) for t in itertools.islice(stream, 100_000)}
    assert not (test | validation) & training
    assert tasks.aime_style_docs("test", 50, seed=7) == tasks.aime_style_docs("test", 50, seed=7)
    assert tasks.aime_style_docs("test", 50, seed=7) != tasks.aime_style_docs("test", 50, seed=8)


def test_multiple_choice_items_have_one_correct_option_and_single_slip_distractors():
    docs = tasks.gpqa_style_docs("test", 300, seed=2)
    assert {d["answer"] for d in docs} == {0, 1, 2, 3}  # the correct option's position is shuffled
    for doc in docs:
        truth = _value(doc["question"])
        assert len(set(doc["choices"])) == 4
        for index, choice in enumerate(doc["choices"]):
            steps, answer = _turn(choice)
            assert len(steps) == 4  # every choice is a whole high-effort turn
            values = [truth] + [_value(s) for s in steps]
            assert values[-1] == answer
            if index == doc["answer"]:
                assert answer == truth and len(set(values)) == 1
            else:
                # One slip: exactly one step changes the value, and the wrong value is carried to the end.
                assert answer != truth
                assert sum(a != b for a, b in zip(values, values[1:])) == 1


def test_the_chat_format_written_out_by_hand():
    p = tasks.Problem((47, 8, 6, 9, 3), ("+", "*", "-", "+"))
    system = "<|start|>system<|message|>Reasoning: {}<|end|><|start|>user<|message|>47+8*6-9+3<|end|>"
    final = "<|start|>assistant<|channel|>final<|message|>89<|return|>"
    assert tasks.prompt_text(p, "high") == system.format("high") + "<|start|>assistant"
    assert tasks.conversation_text(p, "high") == (
        system.format("high")
        + "<|start|>assistant<|channel|>analysis<|message|>47+48-9+3=95-9+3=86+3=89<|end|>"
        + final
    )
    assert tasks.conversation_text(p, "medium") == (
        system.format("medium") + "<|start|>assistant<|channel|>analysis<|message|>47+48-9+3<|end|>" + final
    )
    assert tasks.conversation_text(p, "low") == system.format("low") + final
    with pytest.raises(ValueError):
        tasks.analysis_text(p.steps(), "extra-high")


def test_no_effort_renders_the_medium_prompt_byte_for_byte():
    """As gpt-oss's template: a request without reasoning_effort gets "Reasoning: medium"."""
    for p in tasks.problems("test", 50):
        assert tasks.prompt_text(p, None) == tasks.prompt_text(p, "medium")
        assert tasks.prompt_text(p, None).encode() == tasks.prompt_text(p, "medium").encode()


def test_measurement_parts_cover_the_conversation_and_mark_the_answer():
    p = tasks.Problem((47, 8, 6, 9, 3), ("+", "*", "-", "+"))
    for effort in tasks.EFFORTS:
        parts = tasks.conversation_parts(p, effort)
        assert "".join(text for _, text in parts) == tasks.conversation_text(p, effort)
        assert [text for role, text in parts if role == "answer"] == ["89"]
        analysis = [text for role, text in parts if role == "analysis"]
        assert analysis == {"high": ["47+48-9+3=95-9+3=86+3=89"], "medium": ["47+48-9+3"], "low": []}[effort]


def test_training_stream_mixes_efforts_at_the_requested_rate():
    texts = list(itertools.islice(tasks.training_conversations(0, tasks.effort_mix(0.25, 0.35)), 4000))
    share = {e: sum(f"Reasoning: {e}<" in t for t in texts) / len(texts) for e in tasks.EFFORTS}
    assert 0.22 < share["low"] < 0.28 and 0.32 < share["medium"] < 0.38 and 0.37 < share["high"] < 0.43
    with pytest.raises(ValueError):
        tasks.effort_mix(0.6, 0.5)


@pytest.mark.parametrize(
    ("expression", "value"),
    [("47+8*6-9+3", 89), ("59-8-2-6-9", 34), ("12*3", 36), ("7", 7), ("20-3*4+2", 10), ("2*3*4-1", 23)],
)
def test_the_calculator_evaluates_products_first_then_left_to_right(expression, value):
    assert tasks.calculate(expression) == value  # by hand


@pytest.mark.parametrize("bad", ["", "1+", "+1", "1/2", "1 + 2", "1+2)", None, 12])
def test_the_calculator_refuses_what_is_not_an_expression_of_its_operators(bad):
    with pytest.raises(ValueError):
        tasks.calculate(bad)


def test_a_tool_conversation_is_harmonys_call_and_result_written_out_by_hand():
    problem = tasks.Problem((47, 8, 6, 9, 3), ("+", "*", "-", "+"))
    text = tasks.tool_conversation_text(problem, "low")
    declaration = (
        "<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n\n"
        "// Evaluates an integer expression\ntype calculator = (_: {\nexpression: string,\n}) => any;\n\n"
        "} // namespace functions<|end|>"
    )
    assert text == (
        "<|start|>system<|message|>Reasoning: low<|end|>" + declaration + "<|start|>user<|message|>47+8*6-9+3<|end|>"
        "<|start|>assistant to=functions.calculator<|channel|>commentary <|constrain|>json<|message|>"
        '{"expression": "47+8*6-9+3"}<|call|>'
        "<|start|>functions.calculator to=assistant<|channel|>commentary<|message|>89<|end|>"
        "<|start|>assistant<|channel|>final<|message|>89<|return|>"
    )
    assert tasks.tool_prompt_text(problem, "low") == text[: text.index("<|start|>assistant")] + "<|start|>assistant"


def test_the_training_stream_holds_tool_conversations_at_the_requested_rate():
    texts = list(itertools.islice(tasks.training_conversations(0, tasks.effort_mix(0.2, 0.3), 0.05), 4000))
    share = sum("<|call|>" in text for text in texts) / len(texts)
    assert abs(share - 0.05) < 4 * (0.05 * 0.95 / len(texts)) ** 0.5
    # without tool use the stream is the one earlier checkpoints were trained on
    plain = list(itertools.islice(tasks.training_conversations(0, tasks.effort_mix(0.2, 0.3)), 50))
    assert not any("<|call|>" in text for text in plain)
