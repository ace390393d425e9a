"""The locally trained tokenizer: round trip, digit tokens, prompt/answer boundary, offline loading."""

import itertools

import pytest
from transformers import AutoTokenizer

from quantlab.zoo import tasks
from quantlab.zoo.tokenizer import EOS, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(itertools.islice(tasks.training_texts(0), 5000))


def test_round_trip(tokenizer):
    texts = list(itertools.islice(tasks.training_texts(11), 500)) + ["effort:high Q:10-9=? A:1 #### 1" + EOS]
    for text in texts:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_digits_are_single_tokens(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("Q:9876+5=? A:")["input_ids"])
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("98765")


def test_prompt_tokens_are_a_prefix_of_prompt_plus_answer(tokenizer):
    # Otherwise generation from a prompt would start from a token sequence never seen in training.
    for p in tasks.problems("test", 200):
        for effort in tasks.EFFORTS:
            prompt = tokenizer(tasks.question_text(p, effort))["input_ids"]
            whole = tokenizer(tasks.question_text(p, effort) + tasks.solution_text(p, effort))["input_ids"]
            assert whole[: len(prompt)] == prompt


def test_saved_tokenizer_loads_offline_with_autotokenizer(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "effort:low Q:12*3=? A: #### 36"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.pad_token == "<pad>" and loaded.eos_token == EOS
