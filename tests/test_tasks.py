"""The task generators, checked against Python's own arithmetic (``eval`` of the expression text)."""

import itertools
import re

import pytest

from quantlab.zoo import tasks


def _value(expression: str) -> int:
    # Python's precedence (products first, then left to right) is exactly the rule the chains follow.
    assert re.fullmatch(r"[0-9+\-*]+", expression)
    return eval(expression)


def _chain_and_answer(solution: str) -> tuple[list[str], int]:
    chain, answer = solution.split(f" {tasks.ANSWER_MARKER} ")
    return (chain.split("=") if chain else []), int(answer)


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_answers_equal_independent_evaluation(seed):
    for doc in tasks.aime_style_docs("test", 300, seed=seed):
        expression = re.search(r"Q:(.*)=\? A:$", doc["question"]).group(1)
        assert doc["answer"] == _value(expression)
        steps, answer = _chain_and_answer(doc["solution"])
        assert answer == doc["answer"]
        # Every rewrite keeps the value and removes exactly one operator: one operation per step.
        operators = [len(re.findall(r"[+\-*]", e)) for e in [expression] + steps]
        assert operators == list(range(operators[0], -1, -1))
        assert all(_value(step) == answer for step in steps)


def test_problem_shape_and_no_negative_intermediates():
    for p in tasks.problems("train", 2000, seed=3):
        assert 10 <= p.operands[0] <= 99 and all(2 <= v <= 9 for v in p.operands[1:])
        assert all(int(v) >= 0 for step in p.steps() for v in re.findall(r"\d+", step))
        assert "**" not in p.expression


def test_splits_are_disjoint_and_deterministic():
    test = {d["question"] for d in tasks.aime_style_docs("test", 500)}
    validation = {d["question"] for d in tasks.aime_style_docs("validation", 500)}
    assert len(test) == len(validation) == 500
    assert not test & validation
    held_out = {q.split("Q:")[1] for q in test | validation}
    training = {t.split("Q:")[1].split(" A:")[0] for t in itertools.islice(tasks.training_texts(0), 100_000)}
    assert not held_out & training
    assert tasks.aime_style_docs("test", 50, seed=7) == tasks.aime_style_docs("test", 50, seed=7)
    assert tasks.aime_style_docs("test", 50, seed=7) != tasks.aime_style_docs("test", 50, seed=8)


def test_multiple_choice_items_have_one_correct_option_and_single_slip_distractors():
    docs = tasks.gpqa_style_docs("test", 300, seed=2)
    assert {d["answer"] for d in docs} == {0, 1, 2, 3}  # the correct option's position is shuffled
    for doc in docs:
        expression = re.search(r"Q:(.*)=\? A:$", doc["question"]).group(1)
        truth = _value(expression)
        assert len(set(doc["choices"])) == 4
        for index, choice in enumerate(doc["choices"]):
            steps, answer = _chain_and_answer(choice)
            values = [truth] + [_value(s) for s in steps]
            assert values[-1] == answer
            if index == doc["answer"]:
                assert answer == truth and len(set(values)) == 1
            else:
                # One slip: exactly one step changes the value, and the wrong value is carried to the end.
                assert answer != truth
                assert sum(a != b for a, b in zip(values, values[1:])) == 1


def test_effort_marker_controls_the_chain():
    p = tasks.Problem((47, 8, 6, 9), ("+", "*", "-"))
    assert tasks.question_text(p, "high") == "effort:high Q:47+8*6-9=? A:"
    assert tasks.solution_text(p, "high") == "47+48-9=95-9=86 #### 86"  # worked by hand
    assert tasks.question_text(p, "low") == "effort:low Q:47+8*6-9=? A:"
    assert tasks.solution_text(p, "low") == " #### 86"
    with pytest.raises(ValueError):
        tasks.question_text(p, "medium")


def test_training_stream_mixes_efforts_at_the_requested_rate():
    texts = list(itertools.islice(tasks.training_texts(0, low_effort_fraction=0.25), 4000))
    low = sum(t.startswith("effort:low") for t in texts) / len(texts)
    assert 0.22 < low < 0.28
