"""The locally trained tokenizer: round trip, digit tokens, chat markers, prompt/answer boundary, offline loading."""

import itertools

import pytest
from transformers import AutoTokenizer

from quantlab.zoo import tasks
from quantlab.zoo.tokenizer import CHAT_MARKERS, EOS, PAD, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    stream = tasks.training_conversations(0, tasks.effort_mix(0.2, 0.3))
    return train_tokenizer(itertools.islice(stream, 5000), tasks.chat_template())


def test_round_trip(tokenizer):
    texts = list(itertools.islice(tasks.training_conversations(11, tasks.effort_mix(0.2, 0.3)), 500))
    texts += ["<|im_start|>user\n10-9<|im_end|>\n", "plain text, with {every} ~printable~ char: 42!"]
    for text in texts:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_digits_and_markers_are_single_tokens(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("<|start|>user<|message|>9876+5<|end|>")["input_ids"])
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("98765")
    assert {"<|start|>", "<|message|>", "<|end|>"} <= set(pieces)
    for marker in (PAD, *CHAT_MARKERS):
        assert len(tokenizer(marker)["input_ids"]) == 1


def test_prompt_tokens_are_a_prefix_of_the_conversation(tokenizer):
    # Otherwise generation from a prompt would start from a token sequence never seen in training.
    for p in tasks.problems("test", 200):
        for effort in tasks.EFFORTS:
            prompt = tokenizer(tasks.prompt_text(p, effort))["input_ids"]
            whole = tokenizer(tasks.conversation_text(p, effort))["input_ids"]
            assert whole[: len(prompt)] == prompt


def test_saved_tokenizer_loads_offline_with_its_chat_template(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    p = tasks.problems("test", 1)[0]
    text = tasks.conversation_text(p, "low")
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.pad_token == PAD and loaded.eos_token == EOS
    messages = [tasks.user_message(p)]
    rendered = loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, reasoning_effort="low")
    assert rendered == tasks.prompt_text(p, "low")
