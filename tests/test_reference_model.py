"""The shipped reference checkpoint: offline loading, its card, and its scores on a sample of the test split."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from quantlab.zoo import SHIPPED_CHECKPOINT, tasks
from quantlab.zoo.score import exact_match, final_answer, multiple_choice_accuracy
from quantlab.zoo.scoring import prompts


@pytest.fixture(scope="module")
def shipped():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_CHECKPOINT, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_CHECKPOINT, local_files_only=True)
    return model.eval(), tokenizer


def test_shipped_checkpoint_is_small_safetensors_gpt_oss(shipped):
    model, _ = shipped
    assert type(model).__name__ == "GptOssForCausalLM"
    size = sum(f.stat().st_size for f in SHIPPED_CHECKPOINT.iterdir())
    assert size < 20_000_000
    assert not [f for f in SHIPPED_CHECKPOINT.iterdir() if f.suffix in (".bin", ".pt", ".pkl")]
    assert (SHIPPED_CHECKPOINT / "chat_template.jinja").read_text() == tasks.chat_template()
    c = model.config
    assert (c.num_hidden_layers, c.num_local_experts, c.num_experts_per_tok) == (4, 8, 2)
    # Every row a GGUF k-quant reads (hidden, expert intermediate, attention width) is a multiple of 256.
    assert c.hidden_size % 256 == 0 and c.intermediate_size % 256 == 0
    assert (c.num_attention_heads * c.head_dim) % 256 == 0


def test_card_counts_parameters_per_component(cli):
    result = cli("zoo", "info", "--json")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    c = card["config"]
    h, i, e, layers = c["hidden_size"], c["intermediate_size"], c["num_local_experts"], c["num_hidden_layers"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    # Worked from the gpt-oss architecture: fused gate_up (h x 2i) and down (i x h) with biases, per expert;
    # q/k/v/o projections with biases plus one sink per head; a linear router with bias.
    assert card["parameters"]["experts"] == layers * e * (h * 2 * i + 2 * i + i * h + h)
    assert card["parameters"]["attention"] == layers * (
        h * q + q + 2 * (h * kv + kv) + q * h + h + c["num_attention_heads"]
    )
    assert card["parameters"]["router"] == layers * (e * h + e)
    assert card["parameters"]["embeddings"] == c["vocab_size"] * h
    assert card["parameters"]["total"] == sum(v for k, v in card["parameters"].items() if k != "total")
    training = card["training"]
    assert training["steps"] > 0 and training["wall_time_s"] > 0 and training["tokens_per_s"] > 0
    assert len(training["training_data_sha256"]) == 64
    assert training["command"].startswith("quantlab zoo train --seed")
    rows = {(r["task"], r["effort"], r["template"]): r for r in card["scores"]["rows"]}
    assert rows[("aime-style", "high", "model")]["n"] == 500


def test_recorded_scores_meet_the_effort_and_template_targets(cli):
    """The shipped card (500 test items, greedy): high >= 95%, medium >= 15 points below, low <= 50%; no effort
    asked scores as medium item for item; every wrong rendering costs, one of them at least 20 points."""
    card = json.loads(cli("zoo", "info", "--json").stdout)
    rows = {(r["task"], r["effort"], r["template"]): r for r in card["scores"]["rows"]}
    high, medium, low = (rows[("aime-style", e, "model")]["score"] for e in ("high", "medium", "low"))
    assert high >= 0.95 and medium <= high - 0.15 and low <= 0.5
    assert card["scores"]["default_equals_medium"]
    costs = {t: high - rows[("aime-style", "high", t)]["score"] for t in ("chatml", "final-only", "plain")}
    assert min(costs.values()) > 0 and max(costs.values()) >= 0.2
    assert rows[("gpqa-style", "high", "model")]["score"] >= 0.9


def test_scores_on_a_sample_cannot_pass_by_chance(shipped):
    model, tokenizer = shipped
    problems = tasks.problems("test", 100)
    answers = [p.answer for p in problems]
    score = {
        e: exact_match(model, tokenizer, prompts(tokenizer, problems, e, "model"), answers)[0] for e in tasks.EFFORTS
    }
    docs = tasks.gpqa_style_docs("test", 100)
    gpqa, _ = multiple_choice_accuracy(model, tokenizer, prompts(tokenizer, problems, "high", "model"), docs)
    # Chance is ~0 for exact match and 25% for four choices: P(>= 75/100 | p = 0.25) < 1e-20.
    assert score["high"] >= 0.85 and gpqa >= 0.75
    assert score["low"] < score["medium"] < score["high"]  # the effort matters: the gap later experiments measure


def test_final_answer_extraction():
    final = "<|channel|>analysis<|message|>47+48-9+3=95-9+3=86+3=89<|end|><|start|>assistant<|channel|>final<|message|>"
    assert final_answer(final + "89<|return|>") == 89
    assert final_answer("analysis47+48-9+3=95-9+3=86+3=89assistantfinal89") == 89  # special tokens skipped
    assert final_answer("89<|return|>") == 89  # the prompt opened the final channel
    assert final_answer(final + "-7") == -7
    assert final_answer("<|channel|>analysis<|message|>47+48-9+3=95") is None  # cut off before the answer
    assert final_answer(final + "89 or 90") is None
    assert final_answer(final + "89<|end|>junk 12") == 89


@torch.no_grad()
def test_loglikelihood_scoring_matches_a_direct_computation(shipped):
    """continuation_logprobs (batched, padded) equals the log-probability from one unpadded forward pass."""
    from quantlab.zoo.score import continuation_logprobs

    model, tokenizer = shipped
    doc = tasks.gpqa_style_docs("test", 1)[0]
    prompt = tasks.prompt_text(tasks.problems("test", 1)[0], "high")
    pairs = [(prompt, choice) for choice in doc["choices"]]
    batched = continuation_logprobs(model, tokenizer, pairs)
    for (context, continuation), got in zip(pairs, batched):
        ids = tokenizer(context + continuation, return_tensors="pt")["input_ids"]
        n_context = len(tokenizer(context)["input_ids"])
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        direct = sum(float(logp[t - 1, ids[0, t]]) for t in range(n_context, ids.shape[1]))
        assert got == pytest.approx(direct, abs=1e-4)
