"""Runtime sessions (quantlab.runtimes.sessions): each runtime's next-token log-probabilities, and a session compared
against a session, checked against torch's own softmax, scipy's KL and llama.cpp run directly."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from quantlab.errors import UserError
from quantlab.models.loading import load_model, resolve_model
from quantlab.runtimes import Runtime, RuntimeSettings
from quantlab.runtimes.engines import Engine, get_engine
from quantlab.runtimes.protocols import get_protocol
from quantlab.runtimes.sessions import (
    EndpointSession,
    Session,
    TransformersSession,
    compare_next_tokens,
    open_session,
)
from quantlab.store import ArtifactStore


@pytest.fixture(scope="module")
def zoo():
    model, tokenizer = load_model(resolve_model("zoo:tiny-gpt-oss"), dtype=torch.float32)
    rows = [
        tokenizer(text, add_special_tokens=False)["input_ids"]
        for text in ("<|start|>user<|message|>12+3*5-4+7<|end|><|start|>assistant", "<|start|>user<|message|>9*9")
    ]
    return model, tokenizer, rows


class TopKOnly(Session):
    """What a server gives of another session: only its top-k log-probabilities (the server's side of the
    comparison, so that the top-k path is checked against the full one on the same numbers)."""

    full_distribution = False

    def __init__(self, inner: Session):
        self.inner = inner

    def top_logprobs(self, ids, top_k):
        return self.inner.top_logprobs(ids, top_k)


def _perturbed(model, scale: float = 1.05):
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.mul_(scale)
    return other


def test_transformers_top_logprobs_are_the_softmax_of_its_logits_with_the_prompts_own_token(zoo):
    model, _, rows = zoo
    ids = rows[0]
    with torch.no_grad():
        log_p = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)  # independent: torch directly
    served = TransformersSession(model).top_logprobs(ids, top_k=3)
    assert len(served) == len(ids) - 1
    for position, entry in enumerate(served):
        top3 = set(log_p[position].topk(3).indices.tolist())
        assert top3 <= set(entry) and len(entry) in (3, 4)
        assert ids[position + 1] in entry  # the prompt's own token, as vLLM's prompt_logprobs returns it
        for token, value in entry.items():
            assert value == pytest.approx(float(log_p[position, token]), abs=1e-6)


def test_a_session_against_itself_is_zero_and_against_another_model_is_scipys_kl(zoo):
    model, _, rows = zoo
    same = compare_next_tokens(TransformersSession(model), TransformersSession(model), rows)
    assert all(float(stats["kl"].max()) == 0.0 and stats["same_top"].all() for stats in same)
    other = _perturbed(model)
    stats = compare_next_tokens(TransformersSession(model), TransformersSession(other), rows)
    with torch.no_grad():
        p = torch.softmax(model(torch.tensor([rows[1]])).logits[0].double(), -1).numpy()
        q = torch.softmax(other(torch.tensor([rows[1]])).logits[0].double(), -1).numpy()
    expected = [entropy(p[j], q[j]) for j in range(len(rows[1]) - 1)]
    np.testing.assert_allclose(stats[1]["kl"], expected, rtol=1e-4, atol=1e-7)


def test_a_servers_top_k_is_the_full_kl_when_it_returns_every_token_and_a_lower_bound_otherwise(zoo):
    model, tokenizer, rows = zoo
    reference, candidate = TransformersSession(model), TransformersSession(_perturbed(model))
    vocabulary = int(model.config.vocab_size)
    full = compare_next_tokens(reference, candidate, rows)
    every_token = compare_next_tokens(reference, TopKOnly(candidate), rows, top_k=vocabulary)
    top_5 = compare_next_tokens(reference, TopKOnly(candidate), rows, top_k=5)
    for exact, served, bound in zip(full, every_token, top_5):
        np.testing.assert_allclose(served["kl"], exact["kl"], rtol=1e-4, atol=1e-6)
        assert (bound["kl"] <= exact["kl"] + 1e-6).all() and (bound["tail_mass"] > 0).any()
        np.testing.assert_array_equal(served["same_top"], exact["same_top"])
    with pytest.raises(ValueError, match="top_k"):
        compare_next_tokens(reference, TopKOnly(candidate), rows)


def test_open_session_runs_what_the_settings_name(zoo, tmp_path):
    model, _, rows = zoo
    store = ArtifactStore(tmp_path / "artifacts")
    subject = store.subject("zoo:tiny-gpt-oss")
    with open_session(subject, RuntimeSettings(backend="hf")) as session:
        assert isinstance(session, TransformersSession)
        with torch.no_grad():
            torch.testing.assert_close(session.logits(rows[0]), model(torch.tensor([rows[0]])).logits[0])
    with pytest.raises(UserError, match="no GGUF export"):
        open_session(subject, RuntimeSettings(backend="llama.cpp"))
    with pytest.raises(UserError, match="--endpoint"):
        open_session(subject, RuntimeSettings(backend="endpoint"))
    with open_session(subject, RuntimeSettings(backend="endpoint", endpoint="http://127.0.0.1:9/v1")) as session:
        assert isinstance(session, EndpointSession) and session.protocol.name == "vllm"  # nothing is asked yet


def test_every_runtime_opens_a_session_of_its_own():
    """Each --backend names the one Session subclass that opens it, and no two runtimes share one."""
    classes = {name: Session.of_runtime(name) for name in Runtime.names()}
    assert set(classes) == {"hf", "llama.cpp", "endpoint", "served"}
    assert len(set(classes.values())) == len(classes)
    assert all("opened" in vars(cls) for cls in classes.values())  # each opens itself, none inherits the refusal


@pytest.mark.skipif(__import__("importlib").util.find_spec("llama_cpp") is None, reason="needs quantlab[gguf]")
def test_llama_cpp_session_is_llama_cpp_run_directly_and_near_transformers_on_an_f32_export(zoo, tmp_path):
    from quantlab.export.gguf import export_gguf
    from quantlab.runtimes.llama_cpp import logits, open_gguf
    from quantlab.runtimes.sessions import LlamaCppSession

    model, tokenizer, rows = zoo
    path = tmp_path / "model.gguf"
    export_gguf(model, tokenizer, {}, path)
    with LlamaCppSession(path, n_ctx=256) as session:
        ours = session.logits(rows[0])
        stats = compare_next_tokens(TransformersSession(model), session, rows)
    direct = open_gguf(path, 256)  # llama.cpp run directly, as llama-cpp-python's users run it
    try:
        np.testing.assert_array_equal(ours.numpy(), logits(direct, rows[0]))
    finally:
        direct.close()
    # two runtimes' float32 arithmetic only (logits within about 0.05 of each other here): KL near zero, the
    # same top token everywhere
    kl = np.concatenate([row["kl"] for row in stats])
    assert float(kl.mean()) < 1e-4 and float(kl.max()) < 1e-3
    assert all(row["same_top"].all() for row in stats)


def test_an_endpoint_that_does_not_answer_is_one_line_naming_it():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    session = EndpointSession(f"http://127.0.0.1:{port}/v1", "zoo-tiny-gpt-oss", get_protocol("vllm"))
    with pytest.raises(UserError) as error:
        session.top_logprobs([1, 2, 3], top_k=2)
    message = str(error.value)
    assert f"127.0.0.1:{port}" in message and "cannot reach" in message and "\n" not in message


class _Answers:
    """A server that answers one request with a canned reply, as ``post(route, payload)`` and ``model``."""

    model = "m"

    def __init__(self, reply):
        self.reply, self.sent = reply, []

    def post(self, route, payload):
        self.sent.append((route, payload))
        return self.reply


def test_vllm_prompt_logprobs_are_read_by_token_id_from_its_documented_reply():
    # vLLM's completions reply with prompt_logprobs=k: one entry per prompt position, None at the first, else
    # {token id (a JSON string key): {"logprob", "rank", "decoded_token"}} with the prompt's own token included
    reply = {
        "choices": [
            {
                "prompt_logprobs": [
                    None,
                    {"7": {"logprob": -0.25, "rank": 1, "decoded_token": "a"}},
                    {"3": {"logprob": -2.5, "rank": 4}, "9": {"logprob": -0.1, "rank": 1}},
                ]
            }
        ]
    }
    server = _Answers(reply)
    got = get_protocol("vllm").prompt_logprobs(server, [1, 7, 3], top_k=1)
    assert got == [{7: -0.25}, {3: -2.5, 9: -0.1}]
    route, payload = server.sent[0]
    assert route == "completions" and payload["prompt"] == [1, 7, 3] and payload["prompt_logprobs"] == 1
    assert payload["max_tokens"] == 1 and payload["temperature"] == 0
    with pytest.raises(UserError, match="no prompt_logprobs for a prompt of 4 tokens"):
        get_protocol("vllm").prompt_logprobs(server, [1, 7, 3, 5], top_k=1)


def test_vllm_generation_is_asked_to_stop_at_exactly_the_given_ids_and_its_reply_read_as_vllm_documents_it():
    # vLLM's completions reply when a stop_token_ids token ended it: finish_reason "stop", stop_reason the id, the
    # stop token's text left out of "text" but counted in usage.completion_tokens
    reply = {
        "choices": [{"text": "<|channel|>final<|message|>7", "finish_reason": "stop", "stop_reason": 200002}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
    }
    server = _Answers(reply)
    protocol = get_protocol("vllm")
    assert protocol.generate(server, "p", 16, [200002, 200007], 0.0, 1.0, 3) == (
        "<|channel|>final<|message|>7",
        4,
        True,
    )
    route, payload = server.sent[0]
    assert route == "completions" and payload["prompt"] == "p" and payload["max_tokens"] == 16
    assert payload["stop_token_ids"] == [200002, 200007] and payload["ignore_eos"] is True
    assert payload["skip_special_tokens"] is False and payload["spaces_between_special_tokens"] is False
    assert payload["add_special_tokens"] is False and payload["seed"] == 3
    cut = {
        "choices": [{"text": "abc", "finish_reason": "length", "stop_reason": None}],
        "usage": {"completion_tokens": 3},
    }
    assert protocol.generate(_Answers(cut), "p", 3, [200002], 0.0, 1.0, 0) == ("abc", 3, False)
    with pytest.raises(UserError, match="stop at given token ids"):
        get_protocol("llama.cpp").generate(server, "p", 16, [200002], 0.0, 1.0, 0)


def test_every_engine_speaks_a_registered_protocol_and_llama_cpps_defaults_undo_its_servers():
    for name in Engine.names():
        assert get_engine(name).speaks().name == get_engine(name).protocol
    llama_server = pytest.importorskip("llama_cpp.server.types")
    # llama-cpp-python's server penalizes repeats and cuts the sampled tokens by top_k and min_p unless asked not
    # to; the model's own sampling has none of them, and the protocol's defaults turn each off
    neutral = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}
    for request in (llama_server.CreateCompletionRequest, llama_server.CreateChatCompletionRequest):
        assert all(request.model_fields[name].default != value for name, value in neutral.items())
    assert get_protocol("llama.cpp").request_defaults == neutral
    assert not get_protocol("llama.cpp").prompt_logprobs_by_token_id
    with pytest.raises(UserError, match="no prompt log-probabilities by token id"):
        get_protocol("llama.cpp").prompt_logprobs(_Answers({}), [1, 2], 1)


def test_llama_cpp_generates_transformers_greedy_answers_from_the_f32_export(zoo, tmp_path):
    """Greedy generation through llama.cpp's own sampler on the float32 GGUF export: transformers' generate, token
    for token (stop at <|return|>, text with special tokens); sampling is seeded (the same seed, the same text)."""
    from quantlab.export.gguf import export_gguf
    from quantlab.runtimes.sessions import LlamaCppSession
    from quantlab.zoo import tasks

    model, tokenizer, _ = zoo
    path = tmp_path / "model.gguf"
    export_gguf(model, tokenizer, {}, path)
    problems = tasks.problems("test", 3, 0)
    prompts = [tasks.prompt_text(p, effort) for p in problems for effort in ("low", "high")]
    stops = [tokenizer.convert_tokens_to_ids("<|return|>")]
    limits = [96, 96, 96, 96, 96, 4]  # the last stops at its limit
    reference = TransformersSession(model, tokenizer).generate(prompts, limits, stops)
    with LlamaCppSession(path, n_ctx=256) as session:
        ours = session.generate(prompts, limits, stops)
        sampled = [session.generate(prompts[:2], [40, 40], stops, temperature=1.0, seed=s) for s in (5, 5, 6)]
    assert ours == reference
    assert [stopped for _, _, stopped in ours] == [True] * 5 + [False] and ours[-1][1] == 4
    # at high effort the chain then the final channel, special tokens as text (the first problem's value: 48)
    assert ours[1][0].startswith("<|channel|>analysis<|message|>")
    assert ours[1][0].endswith(f"<|channel|>final<|message|>{problems[0].answer}")
    assert sampled[0] == sampled[1]
