"""Serving engines: the variants served by llama.cpp's and vLLM's OpenAI-compatible servers, started and stopped by
quantlab on 127.0.0.1, evaluated and measured through them, and their failure modes as one line.

The engine tests skip where the engine is absent (llama-cpp-python's server: the gguf extra; vLLM: .venv-vllm,
made by scripts/setup.sh). Every server listens on 127.0.0.1 and is stopped by the test (a ``with`` block)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shipped_model_calls_tools, shipped_vocab_size
from scipy.stats import entropy

from quantlab.errors import UserError
from quantlab.token_statistics import topk_token_statistics

REPO = Path(__file__).resolve().parent.parent


def _vllm_python() -> str | None:
    named = os.environ.get("QUANTLAB_VLLM_PYTHON")
    local = REPO / ".venv-vllm" / "bin" / "python"
    return named if named else (str(local) if local.is_file() else None)


needs_vllm = pytest.mark.skipif(_vllm_python() is None, reason="needs vLLM (.venv-vllm: bash scripts/setup.sh)")
needs_llama_server = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llama_cpp") is None, reason="needs quantlab[gguf] (llama-cpp-python)"
)


# --- the top-k KL bound, against scipy's KL ------------------------------------------------------------------


def _distributions(seed: int, vocabulary: int = 40):
    generator = np.random.default_rng(seed)
    base_logits = torch.tensor(generator.normal(0, 2, vocabulary))
    served_logits = base_logits + torch.tensor(generator.normal(0, 0.5, vocabulary))
    return base_logits, torch.log_softmax(served_logits.double(), -1).numpy()


def test_kl_from_every_token_equals_scipy_and_the_top_k_value_bounds_it_from_below():
    for seed in range(5):
        base_logits, log_q = _distributions(seed)
        p = torch.softmax(base_logits.double(), -1).numpy()
        exact = entropy(p, np.exp(log_q))  # scipy: sum p log(p/q)
        target = torch.tensor([3])
        full = topk_token_statistics(base_logits[None], [dict(enumerate(log_q))], target, top_k=40)
        assert full["kl"][0] == pytest.approx(exact, rel=1e-9)
        assert full["tail_mass"][0] < 1e-12
        for k in (1, 5, 20):
            top = np.argsort(-log_q)[:k]
            served = {int(i): float(log_q[i]) for i in top} | {3: float(log_q[3])}  # plus the prompt's token
            bounded = topk_token_statistics(base_logits[None], [served], target, top_k=k)
            assert bounded["kl"][0] <= exact + 1e-12
            # the log-sum bound, written out by hand: exact part over K plus P log(P/Q) for the tail, Q taken 1e-6
            # larger (the resolution of float32 log-probabilities, docs/serving.md)
            known = np.array(sorted(served))
            tail_p, tail_q = 1 - p[known].sum(), 1 - np.exp(log_q[known]).sum() + 1e-6
            by_hand = (p[known] * (np.log(p[known]) - log_q[known])).sum() + tail_p * np.log(tail_p / tail_q)
            assert bounded["kl"][0] == pytest.approx(by_hand, rel=1e-9)
            # exact statistics stay exact: the prompt token's NLL and Δp, the top token
            assert bounded["nll_variant"][0] == pytest.approx(-log_q[3])
            assert bool(bounded["same_top"][0]) == (int(np.argmax(log_q)) == int(np.argmax(p)))


def test_the_top_k_bound_is_tight_when_the_tails_are_proportional():
    base_logits, _ = _distributions(7)
    p = torch.softmax(base_logits.double(), -1).numpy()
    top = np.argsort(-p)[:5]
    q = p.copy()
    q[top] = q[top][::-1]  # the top tokens reordered, the tail untouched: proportional (equal) tails
    served = {int(i): float(np.log(q[i])) for i in top}
    bounded = topk_token_statistics(base_logits[None], [served], torch.tensor([int(top[0])]), top_k=5)
    # tight up to the 1e-6 taken on the tail's mass: P log(P / (P + 1e-6)) ~ -1e-6
    assert bounded["kl"][0] == pytest.approx(entropy(p, q), abs=2e-6)
    assert bounded["kl"][0] <= entropy(p, q)


# --- failure modes as one line ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_store(tmp_path_factory):
    """A store with a bf16 variant and a Q4_K GGUF variant (its experts)."""
    from quantlab.stages import build as builder

    root = tmp_path_factory.mktemp("served")
    recipes = {
        "bf16": "groups:\n  - select: {component: [experts, attention]}\n    format: bf16\n",
        "q4k": "exports: [gguf]\ngroups:\n  - select: {component: experts}\n    format: gguf:Q4_K\n",
    }
    for name, body in recipes.items():
        path = root / f"{name}.yaml"
        path.write_text(f"name: {name}\nmodel: zoo:tiny-gpt-oss\n{body}")
        builder.build(path, root / "artifacts")
    return root / "artifacts"


def _one_line_error(cli, *args, env=None):
    done = subprocess.run(
        [sys.executable, "-m", "quantlab", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "300", **(env or {})},
        timeout=300,
    )
    err = done.stderr.strip()
    assert done.returncode == 2, (done.stdout, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_engine_not_installed_is_one_line(served_store):
    err = _one_line_error(
        None,
        "serve",
        "bf16",
        "--engine",
        "vllm",
        "--artifacts",
        served_store,
        env={"QUANTLAB_VLLM_PYTHON": "/nonexistent/python"},
    )
    assert "engine vllm is not installed" in err and "setup.sh" in err


def test_unknown_engine_and_a_format_the_engine_cannot_load_are_one_line(served_store):
    assert "unknown engine 'tgi'" in _one_line_error(
        None, "serve", "bf16", "--engine", "tgi", "--artifacts", served_store
    )
    # llama.cpp serves GGUF files: a variant without a GGUF export
    err = _one_line_error(
        None, "eval", "bf16", "--tasks", "zoo_aime_style", "--engine", "llama.cpp", "--artifacts", served_store
    )
    assert "no GGUF export" in err


@needs_vllm
def test_vllm_refuses_quantized_weights_it_has_no_export_for(served_store):
    err = _one_line_error(None, "serve", "q4k", "--engine", "vllm", "--artifacts", served_store)
    assert "gguf:Q4_K" in err and "--load hf" in err


@needs_llama_server
def test_port_taken_is_one_line(served_store):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        err = _one_line_error(
            None, "serve", "q4k", "--engine", "llama.cpp", "--port", port, "--artifacts", served_store
        )
    assert f"port {port} on 127.0.0.1 is taken" in err


# --- llama.cpp's server --------------------------------------------------------------------------------------


@needs_llama_server
def test_llama_cpp_served_answers_equal_the_in_process_runtime(served_store):
    """quantlab starts llama-cpp-python's server on the GGUF export, evaluates through lm-eval's completions
    client and stops it: the same greedy answers, item for item, as llama.cpp in-process (low effort: llama.cpp
    ends generation at <|end|> for this vocabulary, docs/serving.md)."""
    from quantlab.stages.evaluate.run import evaluate

    served = evaluate(
        "q4k", "zoo_aime_style", limit=20, artifacts=served_store, engine="llama.cpp", reasoning_effort="low"
    )
    local = evaluate(
        "q4k", "zoo_aime_style", limit=20, artifacts=served_store, backend="llama.cpp", reasoning_effort="low"
    )
    assert served.settings["engine"] == "llama.cpp" and served.settings["loaded"] == "gguf"
    assert served.settings["engine_version"].startswith("llama-cpp-python")
    assert served.settings["request_defaults"] == {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}
    assert sum(row[0] for row in local.correct) > 0
    assert [s["response"] for s in served.lm_eval[0]["samples"]] == [s["response"] for s in local.lm_eval[0]["samples"]]
    assert Path(served.server["log"]).is_file()
    # the server was stopped: nothing listens on the port the log names any more
    assert not _llama_servers(served_store)


def _llama_servers(store: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"llama_cpp.server --model {store}"], capture_output=True, text=True)
    return found.stdout.split()


@needs_llama_server
def test_a_server_that_dies_during_an_evaluation_is_one_line_and_nothing_is_stored(served_store):
    import threading

    from quantlab.stages.evaluate.run import evaluate

    log = served_store / "q4k" / "serve" / "llama.cpp.log"
    killed = []

    def kill_after_first_request():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if log.is_file() and "POST /v1/completions" in log.read_text(errors="replace"):
                for pid in _llama_servers(served_store):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(pid)
                return
            time.sleep(0.05)

    log.unlink(missing_ok=True)
    killer = threading.Thread(target=kill_after_first_request)
    killer.start()
    before = sorted((served_store / "q4k" / "eval").glob("*.json")) if (served_store / "q4k" / "eval").is_dir() else []
    try:
        with pytest.raises(UserError) as failure:
            evaluate(
                "q4k",
                "zoo_aime_style",
                limit=60,
                artifacts=served_store,
                engine="llama.cpp",
                reasoning_effort="high",
                concurrent=1,
            )
    finally:
        killer.join()
    assert killed
    message = str(failure.value)
    assert "server died during the evaluation" in message and "nothing was stored" in message
    assert "\n" not in message
    after = sorted((served_store / "q4k" / "eval").glob("*.json"))
    assert after == before


def _start_serve_command(served_store, *extra: str) -> tuple[subprocess.Popen, str]:
    """``quantlab serve q4k --engine llama.cpp`` (with ``extra``) started as a user starts it; its process and the
    URL it prints."""
    process = subprocess.Popen(
        [sys.executable, "-m", "quantlab", "serve", "q4k", "--engine", "llama.cpp", "--artifacts", str(served_store)]
        + list(extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "400"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if " at http://127.0.0.1:" in line:
            return process, line.split(" at ")[1].split()[0]
    process.kill()
    raise AssertionError(process.stderr.read())


@needs_llama_server
def test_serve_command_prints_its_url_and_stops_on_sigterm(served_store):
    process, url = _start_serve_command(served_store)
    try:
        models = json.load(urllib.request.urlopen(f"{url}/models", timeout=10))
        assert models["data"][0]["id"] == "q4k"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert "server stopped" in process.stdout.read()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{url}/models", timeout=2)
        assert not _llama_servers(served_store)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@needs_llama_server
def test_the_official_openai_client_reads_the_chat_front(served_store):
    """openai's own Python client against ``quantlab serve --chat-front``: the model list, a chat completion with a
    reasoning effort (the response's types as the client's models declare them, usage adding up, greedy answers
    the same twice), its token log-probabilities, and an invalid request as the client's BadRequestError."""
    openai = pytest.importorskip("openai")
    process, url = _start_serve_command(served_store, "--chat-front")
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        assert [model.id for model in client.models.list()] == ["q4k"]
        request = {
            "model": "q4k",
            "messages": [{"role": "user", "content": "12+3*5-4+7"}],
            "max_tokens": 64,
            "temperature": 0,
            "reasoning_effort": "high",
        }
        first, again = client.chat.completions.create(**request), client.chat.completions.create(**request)
        choice = first.choices[0]
        assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
        assert choice.finish_reason in ("stop", "length")
        reasoning = (choice.message.model_extra or {}).get("reasoning_content")
        assert isinstance(reasoning, str) and reasoning  # the analysis channel, as vLLM names its field
        assert first.usage is not None and first.usage.prompt_tokens > 0
        assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
        assert 0 < first.usage.completion_tokens <= 64
        assert again.choices[0].message.content == choice.message.content  # greedy: the same answer
        scored = client.chat.completions.create(**request, logprobs=True, top_logprobs=2)
        tokens = scored.choices[0].logprobs.content
        assert tokens and all(isinstance(t.token, str) and t.logprob <= 0 for t in tokens)
        assert all(len(t.top_logprobs) <= 2 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in tokens)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="q4k", messages=[], max_tokens=8)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


@needs_llama_server
@pytest.mark.skipif(
    not shipped_model_calls_tools(), reason="the shipped checkpoint predates <|call|> (retrain pending)"
)
def test_the_official_openai_client_calls_the_models_tool_through_the_chat_front(served_store):
    """A function tool through openai's client: the model's calculator call comes back as ``tool_calls`` (one
    function call, JSON arguments the tool takes, finish reason ``tool_calls``), and the tool's result sent back
    as a ``tool`` message is answered in the content."""
    openai = pytest.importorskip("openai")
    from quantlab.zoo import tasks

    process, url = _start_serve_command(served_store, "--chat-front")
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        problem = tasks.problems("test", 1)[0]
        messages: list = [{"role": "user", "content": problem.expression}]
        request = {"model": "q4k", "max_tokens": 48, "temperature": 0, "tools": [tasks.CALCULATOR_TOOL]}
        called = client.chat.completions.create(messages=messages, **request).choices[0]
        assert called.finish_reason == "tool_calls"
        (call,) = called.message.tool_calls
        assert call.type == "function" and call.function.name == "calculator" and call.id
        arguments = json.loads(call.function.arguments)
        assert set(arguments) == {"expression"} and tasks.calculate(arguments["expression"]) == problem.answer
        messages += [
            called.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": str(problem.answer)},
        ]
        answered = client.chat.completions.create(messages=messages, **request).choices[0]
        assert answered.finish_reason == "stop" and not answered.message.tool_calls
        assert answered.message.content == str(problem.answer)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


GPT_OSS_WHEEL = REPO / ".cache" / "wheels" / "gpt_oss-0.0.9-py3-none-any.whl"  # scripts/setup.sh downloads it


@needs_llama_server
@pytest.mark.skipif(not GPT_OSS_WHEEL.is_file(), reason="gpt-oss's wheel is not in .cache/wheels (scripts/setup.sh)")
def test_gpt_oss_evals_chat_completions_sampler_reads_the_chat_front(served_store, monkeypatch):
    """gpt-oss's own evals sampler (``gpt_oss.evals.chat_completions_sampler``, chat-completions mode, high
    effort) against ``quantlab serve --chat-front --reasoning-field reasoning``: the answer it returns is the
    model's final channel, and the reasoning it reads (the ``reasoning`` field) is kept in the conversation it
    records, as its AIME and GPQA evals use it. Its retry loop never gives up, so it runs in a thread the test
    waits for a bounded time."""
    pytest.importorskip("openai")
    sys.path.insert(0, str(GPT_OSS_WHEEL))  # a pure-Python wheel imports as a zip
    try:
        from gpt_oss.evals.chat_completions_sampler import ChatCompletionsSampler
    finally:
        sys.path.remove(str(GPT_OSS_WHEEL))
    from quantlab.zoo import tasks

    problem = tasks.problems("test", 1)[0]
    process, url = _start_serve_command(served_store, "--chat-front", "--reasoning-field", "reasoning")
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "unused")  # the sampler's client takes its key from the environment
        sampler = ChatCompletionsSampler(
            model="q4k", temperature=0.0, max_tokens=96, reasoning_model=True, reasoning_effort="high", base_url=url
        )
        results: list = []
        worker = threading.Thread(
            target=lambda: results.append(sampler([{"role": "user", "content": problem.expression}])), daemon=True
        )
        worker.start()
        worker.join(timeout=120)
        assert results, "the sampler did not return within 120 s"
        (response,) = results
        assert response.response_text.strip() == str(problem.answer)
        # the high-effort chain, read from the reasoning field and appended as an assistant message
        chain = response.actual_queried_message_list[-1]
        assert chain["role"] == "assistant" and chain["content"].startswith(problem.steps()[0])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


# --- vLLM's server -------------------------------------------------------------------------------------------


@needs_vllm
def test_vllm_float32_serves_transformers_answers_and_logits(served_store):
    """bf16 weights served by vLLM (CPU build) with float32 activations: the greedy answers of transformers,
    item for item, and log-probabilities whose KL from transformers' is zero up to float32 rounding (every token
    of the vocabulary returned, so the KL is exact, not a bound)."""
    from quantlab.runtimes.serve import ServeOptions
    from quantlab.stages.evaluate.compare import different_answers
    from quantlab.stages.evaluate.run import evaluate
    from quantlab.stages.measure.run import measure_variant

    options = ServeOptions(dtype="float32")
    # the model source itself served (its own folder), the measurement on the bf16 variant (the same weights)
    served = evaluate(
        "zoo:tiny-gpt-oss",
        "zoo_aime_style",
        limit=24,
        artifacts=served_store,
        engine="vllm",
        serve_options=options,
        reasoning_effort="high",
    )
    local = evaluate("zoo:tiny-gpt-oss", "zoo_aime_style", limit=24, artifacts=served_store, reasoning_effort="high")
    assert served.settings["engine_version"].startswith("vllm")
    assert different_answers(local, served) == 0 and served.correct == local.correct
    measured = measure_variant("bf16", max_tokens=512, artifacts=served_store, engine="vllm", serve_options=options)
    engine = measured.engine
    assert engine is not None
    assert engine["kl"] == "exact" and engine["top_k"] == shipped_vocab_size()
    responses = engine["logits"]["response_tokens"]
    assert abs(responses["kl_divergence"]["mean"]) < 1e-6 and responses["same_top"]["rate"] == 1.0
    assert responses["perplexity_ratio"] == pytest.approx(1.0, abs=1e-5)


@needs_vllm
def test_a_vllm_session_generates_transformers_greedy_turns_stopping_at_token_ids(served_store):
    """Session.generate through vLLM's completions route (float32): transformers' generate, token for token, with
    special tokens kept as text, the stop token left out and not counted, and a prompt cut at its limit."""
    from quantlab.runtimes import RuntimeSettings
    from quantlab.runtimes.sessions import ServedSession, TransformersSession, open_session
    from quantlab.store import ArtifactStore
    from quantlab.zoo import tasks

    subject = ArtifactStore(served_store).subject("zoo:tiny-gpt-oss")
    local = TransformersSession.opened(subject, RuntimeSettings())
    tokenizer = local.tokenizer
    problems = tasks.problems("test", 3, 0)
    prompts = [tasks.prompt_text(p, effort) for p in problems for effort in ("low", "high")]
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|return|>", "<|end|>")]
    limits = [96, 96, 96, 96, 96, 4]  # the last stops at its limit
    reference = local.generate(prompts, limits, stops)
    settings = RuntimeSettings(backend="served", engine="vllm", dtype="float32")
    with open_session(subject, settings, ArtifactStore(served_store)) as session:
        assert isinstance(session, ServedSession)
        served = session.generate(prompts, limits, stops)
    assert served == reference
    assert [stopped for _, _, stopped in served] == [True] * 5 + [False] and served[-1][1] == 4
    assert served[1][0].startswith("<|channel|>analysis<|message|>")  # high effort: the chain first, as text


@needs_llama_server
@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGKILL])
def test_no_server_outlives_a_command_that_is_killed(served_store, kill):
    """quantlab killed mid-evaluation (SIGTERM: its handler stops the server; SIGKILL: Linux's parent-death
    signal, set for the server before it starts, does) leaves no server behind."""
    log = served_store / "q4k" / "serve" / "llama.cpp.log"
    log.unlink(missing_ok=True)
    command = ["eval", "q4k", "--tasks", "zoo_aime_style", "--limit", "200", "--engine", "llama.cpp"]
    process = subprocess.Popen(
        [sys.executable, "-m", "quantlab", *command, "--concurrent", "1", "--artifacts", str(served_store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 180
        while not (log.is_file() and "POST /v1/completions" in log.read_text(errors="replace")):
            assert time.monotonic() < deadline and process.poll() is None, "the served evaluation did not start"
            time.sleep(0.1)
        assert _llama_servers(served_store)
        process.send_signal(kill)
        process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _llama_servers(served_store) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _llama_servers(served_store)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_engine_is_a_runtime_factor_of_attribution():
    from quantlab.recipe import load_recipe
    from quantlab.stages.attribute import attribute, cell_recipe, recipe_factors

    recipe = load_recipe(REPO / "recipes" / "mxfp4.yaml")
    factors = recipe_factors(recipe, True, engine="vllm")
    assert factors[-1].key == "runtime" and factors[-1].kind == "runtime" and "vLLM" in factors[-1].label
    # a served engine loads each cell's own weights: the runtime alone leaves the baseline's, with no export
    assert cell_recipe(recipe, frozenset({"runtime"}), runtime=False, keys={f.key for f in factors}) is None
    with pytest.raises(UserError, match="--engine 'tgi'"):
        attribute(REPO / "recipes" / "mxfp4.yaml", ["zoo_aime_style"], engine="tgi")
    with pytest.raises(UserError, match="drop --no-runtime"):
        attribute(REPO / "recipes" / "mxfp4.yaml", ["zoo_aime_style"], engine="vllm", runtime=False)


@needs_llama_server
def test_the_report_puts_the_runtimes_side_by_side(served_store, tmp_path):
    """transformers and llama.cpp's server on the same variant, task and items: one table row each, the served
    one with its flips and differing answers counted against transformers (counted here from the samples)."""
    from quantlab.stages.evaluate.run import evaluate
    from quantlab.stages.report import write_report

    local = evaluate("q4k", "zoo_aime_style", limit=20, artifacts=served_store, reasoning_effort="low")
    served = evaluate(
        "q4k", "zoo_aime_style", limit=20, artifacts=served_store, engine="llama.cpp", reasoning_effort="low"
    )
    differ = sum(
        a["response"] != b["response"] for a, b in zip(local.lm_eval[0]["samples"], served.lm_eval[0]["samples"])
    )
    paths = write_report(served_store, tmp_path / "report", ["q4k"], "q4k", "quantlab report")
    section = paths["markdown"].read_text().split("## Runtimes side by side")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| q4k | zoo_aime_style")]
    # the transformers run first; the served run beside it (with llama.cpp in-process too when the store has it)
    assert "| transformers |" in rows[0]
    served_rows = [row for row in rows if "llama.cpp (gguf, auto) (llama-cpp-python" in row]
    assert len(served_rows) == 1 and "64 requests in flight" in served_rows[0]
    assert served_rows[0].endswith(f"| {differ} of 20 |")


@needs_llama_server
def test_llama_cpp_served_log_likelihoods_equal_the_in_process_runtime(served_store):
    """A log-likelihood task through llama.cpp's server (echo + logprobs on the completions endpoint) scores as
    llama.cpp in-process does. llama-cpp-python's echoed log-probabilities are shifted by one position unless the
    prompt starts with the GGUF's BOS; this pins that the lab's GGUF export and prompts keep them aligned."""
    from quantlab.stages.evaluate.run import evaluate

    served = evaluate("q4k", "zoo_gpqa_style", limit=12, artifacts=served_store, engine="llama.cpp")
    local = evaluate("q4k", "zoo_gpqa_style", limit=12, artifacts=served_store, backend="llama.cpp")
    assert served.correct == local.correct and sum(row[0] for row in local.correct) >= 6
    for a, b in zip(served.lm_eval[0]["samples"], local.lm_eval[0]["samples"]):
        assert a["response"][0] == pytest.approx(b["response"][0], abs=1e-3)
