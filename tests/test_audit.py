"""quantlab audit against servers the tests start on 127.0.0.1: a faithful one passes every check, each host
mistake fails its own check (and the check names it), quantized weights are named, and an endpoint that
misbehaves gives "could not check" with the reason, never a traceback. Every server is stopped by its test."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import shipped_model_calls_tools

from quantlab.errors import UserError
from quantlab.runtimes.chat_front import FrontSettings

needs_llama_server = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llama_cpp") is None, reason="needs quantlab[gguf] (llama-cpp-python)"
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The reference's bf16 GGUF (llama.cpp serves the reference itself) and the mxfp4 variant (with its GGUF)."""
    from quantlab.stages.build import build

    root = tmp_path_factory.mktemp("audited")
    for recipe in ("bf16-gguf", "mxfp4"):
        build(recipe, root)
    return root


def _audit(store, variant, front, **options):
    from quantlab.runtimes.serve import serve
    from quantlab.stages.audit import audit

    with serve(variant, "llama.cpp", store, front=front) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        return audit(server.base_url, artifacts=store, **options)


def _verdicts(record) -> dict[str, str]:
    return {check.name: check.verdict for check in record.checks}


@needs_llama_server
def test_the_reference_served_faithfully_passes_every_check_and_is_named(store):
    record = _audit(store, "bf16-gguf", FrontSettings(), budget=80, repeats=2)
    assert _verdicts(record) == {
        name: "pass" for name in ("weights", "sampling", "template", "effort", "accuracy", "shape")
    } | {"tools": "pass" if shipped_model_calls_tools() else "not applicable"}
    # the level is the audit's: shared among its six tests
    assert record.alpha == 0.05 and record.check_alpha == pytest.approx(0.05 / 6)
    tested = [check for check in record.checks if check.verdict == "pass" and check.name != "shape"]
    assert tested and all(check.alpha == pytest.approx(0.05 / 6) for check in tested)
    tools = next(check for check in record.checks if check.name == "tools")
    if shipped_model_calls_tools():
        assert tools.detail["round_trips"]["endpoint"] == tools.detail["questions"]  # every call answered
    weights = record.checks[0]
    # the reference and its bf16 GGUF are the same weights: the reference is named (ties go to it)
    assert weights.detail["named"] == "zoo-tiny-gpt-oss"
    assert (
        weights.detail["candidates"]["mxfp4"]["mean_kl"]
        > 10 * weights.detail["candidates"]["zoo-tiny-gpt-oss"]["mean_kl"]
    )
    accuracy = next(check for check in record.checks if check.name == "accuracy")
    assert accuracy.detail["repeats"] == 2 and set(accuracy.detail["pass_at_k"]["endpoint"]) == {"1", "2"}
    assert record.queries == 1 + sum(check.queries for check in record.checks)  # + the model list
    assert all(check.queries <= check.budget for check in record.checks)
    stored = json.loads(next((store / "audits").glob("127.0.0.1-*.json")).read_text())
    assert stored["reference"] == "zoo-tiny-gpt-oss" and len(stored["checks"]) == 7
    # nothing failed: no ranking of causes, and the record says why
    assert record.causes == [] and record.cause.startswith("no departure to explain")


@needs_llama_server
@pytest.mark.parametrize(
    ("front", "check", "diagnosis"),
    [
        (
            FrontSettings(effort_honored=False),
            "effort",
            {"looks_like": {"low": "medium", "medium": "medium", "high": "medium"}},
        ),
        (FrontSettings(chat_template="chatml"), "template", {"renders_like": "chatml"}),
        (FrontSettings(chat_template="final-only"), "template", {"renders_like": "final-only"}),
        (FrontSettings(chat_template="plain"), "template", {"renders_like": "plain"}),
        (FrontSettings(sampling_honored=False), "sampling", {}),
    ],
    ids=["effort-dropped", "chatml", "final-only", "plain", "sampling-dropped"],
)
def test_each_host_mistake_fails_its_own_check_and_the_check_names_it(store, front, check, diagnosis):
    record = _audit(store, "bf16-gguf", front, checks=[check])
    (result,) = record.checks
    assert result.verdict == "fail", result.reason
    assert result.p_value < record.alpha
    for key, value in diagnosis.items():
        assert result.detail[key] == value


@needs_llama_server
@pytest.mark.skipif(
    not shipped_model_calls_tools(), reason="the shipped checkpoint predates <|call|> (retrain pending)"
)
def test_llama_cpp_pythons_own_chat_route_passes_the_template_check_given_its_effort(store):
    """llama-cpp-python's own chat route (no chat front): it renders the GGUF's template, and with <|call|> in
    the vocabulary llama.cpp goes on past an analysis message's <|end|>. Given the effort it renders (its
    chat_template_kwargs; the template check asks with none, which the template writes as medium) its turns are
    the model's. What it cannot do is read an effort per request (the effort check fails, its cause the effort
    dropped), and it leaves the channels in the content (the shape check)."""
    from quantlab.runtimes.serve import ServeOptions, serve
    from quantlab.stages.audit import audit

    options = ServeOptions(reasoning_effort="medium")
    with serve("bf16-gguf", "llama.cpp", store, options=options) as server:
        record = audit(server.base_url, artifacts=store, checks=["template", "effort", "shape"], budget=40)
    verdicts = _verdicts(record)
    assert verdicts == {"template": "pass", "effort": "fail", "shape": "fail"}, [c.reason for c in record.checks]
    template = next(check for check in record.checks if check.name == "template")
    assert template.detail["renders_like"] == "model"
    shape = next(check for check in record.checks if check.name == "shape")
    assert "left in the content" in shape.reason
    assert record.causes[0].name == "effort dropped"


@needs_llama_server
def test_quantized_weights_fail_the_weights_check_which_names_the_variant(store):
    record = _audit(store, "mxfp4", FrontSettings(), checks=["weights"], budget=16)
    (weights,) = record.checks
    assert weights.verdict == "fail"
    assert weights.detail["named"] == "mxfp4"
    # the cause ranking agrees: the store's mxfp4 ranks first and explains the endpoint on its own
    assert record.causes[0].name == "weights: mxfp4" and record.causes[0].explains
    assert record.cause.startswith("explained by weights: mxfp4")


@needs_llama_server
def test_weights_that_no_local_model_explains_are_named_by_nothing(store):
    """mxfp4 served, but only the reference to compare with: the check fails and names nothing (not the closest)."""
    record = _audit(store, "mxfp4", FrontSettings(), checks=["weights"], budget=16, candidates=[])
    (weights,) = record.checks
    assert weights.verdict == "fail" and weights.detail["named"] is None
    assert weights.detail["closest"] == "zoo-tiny-gpt-oss" and "explains the endpoint" in weights.reason
    assert weights.reason.count("none of the 1 local models") == 1
    # nothing in the library explains it: the fitted unknown format ranks first, and the sentence says so
    assert record.causes[0].name == "weights: an unknown format" and not record.causes[0].known
    assert record.cause.startswith("none of the known departures explains it")


@needs_llama_server
def test_two_departures_at_once_are_named_as_the_pair(store):
    """The demo's host: mxfp4 weights and the effort dropped. Neither alone explains the endpoint (each leaves
    the other's turns unexplained); the pair ranks first and does. Run before the llama.cpp calibration below:
    against its far tighter noise the ranking calls mxfp4's GGUF "an unknown format" (docs/audit.md, left)."""
    record = _audit(store, "mxfp4", FrontSettings(effort_honored=False))
    top, *rest = record.causes
    assert (top.name, top.kind, top.explains) == ("weights: mxfp4 + effort dropped", "weights + effort", True)
    singles = {cause.name: cause for cause in rest}
    assert singles["weights: mxfp4"].explains is False and singles["effort dropped"].explains is False


@needs_llama_server
def test_calibrating_on_a_faithful_server_replaces_the_in_process_stand_in(store):
    from quantlab.stages.audit.calibration import CALIBRATION_PROMPTS, IN_PROCESS

    record = _audit(store, "bf16-gguf", FrontSettings(), checks=["weights"], calibrate=True)
    (weights,) = record.checks
    assert weights.verdict == "pass" and weights.queries >= CALIBRATION_PROMPTS
    calibration = json.loads((store / "audits" / "calibration" / "zoo-tiny-gpt-oss.json").read_text())
    (source,) = calibration["kl_per_prompt"]
    assert source.startswith("http://127.0.0.1:") and IN_PROCESS not in calibration["kl_per_prompt"]
    # llama.cpp computes in float32 from the bf16 weights: its threshold is far below bf16 activations' (7e-4)
    assert max(calibration["kl_per_prompt"][source]) < 1e-4
    # the next audit is tested against it
    again = _audit(store, "mxfp4", FrontSettings(), checks=["weights"], budget=16)
    assert again.checks[0].detail["threshold"] < 1e-4 and again.checks[0].verdict == "fail"


@needs_llama_server
@pytest.mark.parametrize(
    ("edit", "first", "explains"),
    [("hard-high", "effort fixed at high", True), ("no-system", "rendering: an unknown template or effort", None)],
    ids=["effort-hard-coded-high", "system-message-dropped"],
)
def test_a_held_out_template_is_named_by_the_library_or_by_nothing_it_knows(store, tmp_path, edit, first, explains):
    """Templates the lab does not ship: one that hard-codes high effort is the library's "effort fixed at high"
    (it also fails the template check, whose turns to a request without an effort are the reference's at high);
    one that drops the system message is none of the known departures."""
    from quantlab.bench.audit_causes import held_out_template
    from quantlab.chat import model_template
    from quantlab.store import as_store

    own = model_template(as_store(store).subject("zoo:tiny-gpt-oss").model_folder)
    path = tmp_path / f"{edit}.jinja"
    path.write_text(held_out_template(edit, own or ""))
    record = _audit(store, "bf16-gguf", FrontSettings(chat_template=str(path)))
    assert _verdicts(record)["template"] == "fail"
    top = record.causes[0]
    assert (top.name, top.explains) == (first, explains), record.cause
    assert top.log_likelihood_ratio > 0  # likelier than the faithful engine


# --- an endpoint that misbehaves ---------------------------------------------------------------------------


class Misbehaving(ThreadingHTTPServer):
    """An endpoint that lists a model and then answers every generation request the way ``mode`` says."""

    request_queue_size = 64  # the audit sends several requests at once

    def __init__(self, mode: str):
        self.mode, self.paths = mode, []
        super().__init__(("127.0.0.1", 0), _MisbehavingHandler)
        self.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _MisbehavingHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.paths.append(self.path)
        self._send(200, json.dumps({"data": [{"id": "claimed"}]}).encode())

    def do_POST(self):
        self.server.paths.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode = self.server.mode
        if mode == "refuses":
            return self._send(503, b'{"error": {"message": "overloaded"}}')
        if mode == "not-json":
            return self._send(200, b"<html>gateway error</html>")
        if mode == "wrong-shape":
            return self._send(200, b'{"choices": []}')
        if mode == "slow":
            time.sleep(2.5)
            return self._send(200, b"{}")
        if mode == "redirects":
            return self._send(307, b"", {"Location": "http://127.0.0.2:9/v1/completions"})
        text = "<|channel|>final<|message|>89" if self.path.endswith("/completions") else "89"
        choice = {"index": 0, "finish_reason": "stop", "text": text, "message": {"role": "assistant", "content": "89"}}
        self._send(200, json.dumps({"object": "text_completion", "choices": [choice]}).encode())


@pytest.fixture
def misbehaving(request):
    server = Misbehaving(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("misbehaving", "reason"),
    [
        ("refuses", "HTTP 503"),
        ("not-json", "not JSON"),
        ("wrong-shape", "no choices"),
        ("slow", "no answer within 1 s"),
        ("redirects", "redirected"),
    ],
    indirect=["misbehaving"],
)
def test_a_misbehaving_endpoint_gets_could_not_check_with_the_reason_and_only_its_url_is_asked(
    misbehaving, reason, tmp_path
):
    from quantlab.stages.audit import audit

    timeout_s = 1 if misbehaving.mode == "slow" else 30
    checks = ["sampling", "accuracy", "shape"]
    record = audit(misbehaving.url, budget=40, artifacts=tmp_path, checks=checks, timeout_s=timeout_s)
    for check in record.checks:
        assert check.verdict == "could not check", (check.name, check.reason)
        assert reason in check.reason
    # every request went to this endpoint (the redirect was not followed), and each was counted (the model list
    # included); a request the client gave up on may reach the server a moment later
    deadline = time.monotonic() + 5
    while len(misbehaving.paths) < record.queries and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(misbehaving.paths) == record.queries
    assert all(path.startswith("/v1/") for path in misbehaving.paths)


@pytest.mark.parametrize("misbehaving", ["answers-without-logprobs"], indirect=True)
def test_an_endpoint_without_log_probabilities_is_checked_from_sampled_text(misbehaving, tmp_path):
    from quantlab.stages.audit import audit

    record = audit(misbehaving.url, budget=24, artifacts=tmp_path, checks=["weights"], candidates=[])
    (weights,) = record.checks
    # its answer never varies and never reasons: the sampled text differs from the reference's
    assert weights.detail["mode"] == "text only"
    assert weights.verdict == "fail"


def test_an_unreachable_endpoint_or_a_wrong_argument_is_one_line(tmp_path):
    from quantlab.stages.audit import audit

    with pytest.raises(UserError, match="cannot reach"):
        audit("http://127.0.0.1:9/v1", artifacts=tmp_path)
    with pytest.raises(UserError, match="http"):
        audit("ftp://example/v1", artifacts=tmp_path)
    with pytest.raises(UserError, match="unknown check 'weight'"):
        audit("http://127.0.0.1:9/v1", artifacts=tmp_path, checks=["weight"])
    with pytest.raises(UserError, match="--api"):
        audit("http://127.0.0.1:9/v1", artifacts=tmp_path, api="responses")
