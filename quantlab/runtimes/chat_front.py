"""The chat API in front of an engine's completions route: how a host turns a conversation into a prompt.

A provider's ``/v1/chat/completions`` renders the conversation with a chat template, passes the reasoning effort
to it, applies the sampling settings, generates, and hands back the analysis channel as a reasoning field and the
final channel as the content. Each of those steps is where a host can go wrong without touching the weights (the
provider study's stale engine dropped the effort; others render the wrong template). ``ChatFront`` does those
steps itself, in front of a server quantlab started, so that the lab can serve a variant through a chat API both
faithfully and with each of those mistakes, on purpose (``FrontSettings``), for ``quantlab audit`` to find.

It is needed for faithfulness too: vLLM's chat route renders gpt-oss models with openai-harmony's own encoder
(o200k token ids, outside a smaller vocabulary), and llama.cpp stops at ``<|end|>`` for a vocabulary without
``<|call|>`` (its rule for keeping ``<|end|>`` out of the end-of-generation set needs both), so a turn would end
after its analysis. The front continues such a turn with the next assistant message, as a harmony-aware server
does. Everything except the chat route (``/v1/models``, ``/v1/completions``) is passed to the engine unchanged.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from quantlab.chat import MODEL, harmony, render, template_source
from quantlab.errors import UserError
from quantlab.runtimes.openai_client import OpenAIClient, RequestFailed

DEFAULT_MAX_TOKENS = 256
UPSTREAM_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class FrontSettings:
    """What the host does with a chat request: the template it renders with (a name of ``quantlab.chat`` or a
    Jinja file), whether it passes the requested reasoning effort to it, whether it applies the requested
    temperature and top_p (not: the engine's defaults apply), and the response field the reasoning goes in."""

    chat_template: str = MODEL
    effort_honored: bool = True
    sampling_honored: bool = True
    reasoning_field: str = "reasoning_content"

    def __post_init__(self):
        if self.reasoning_field not in harmony.REASONING_FIELDS:
            fields = ", ".join(harmony.REASONING_FIELDS)
            raise UserError(f"reasoning field {self.reasoning_field!r}: give one of {fields}")

    @property
    def faithful(self) -> bool:
        return self == replace(FrontSettings(), reasoning_field=self.reasoning_field)

    def record(self) -> dict[str, Any]:
        return {
            "chat_template": self.chat_template,
            "effort_honored": self.effort_honored,
            "sampling_honored": self.sampling_honored,
            "reasoning_field": self.reasoning_field,
        }

    def describe(self) -> str:
        if self.faithful:
            return "faithful chat API"
        wrong = []
        if self.chat_template != MODEL:
            wrong.append(f"chat template {self.chat_template}")
        if not self.effort_honored:
            wrong.append("reasoning effort dropped")
        if not self.sampling_honored:
            wrong.append("temperature and top_p dropped")
        return "chat API with " + ", ".join(wrong)


@dataclass
class Upstream:
    """The engine's server the front forwards to (the lab's OpenAI client of it: its base URL and the model name
    its requests carry) and the request fields that keep it faithful (``Server.request_defaults``)."""

    client: OpenAIClient
    request_defaults: dict = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.client.model

    def post(self, route: str, payload: dict) -> tuple[int, dict]:
        """The engine's HTTP status and JSON answer, its error answers included (the front passes them on); an
        engine that does not answer at all is an ``OSError`` (the front answers 502)."""
        try:
            return 200, self.client.request(route, payload, UPSTREAM_TIMEOUT_S)
        except RequestFailed as failure:
            if failure.status is None:
                raise ConnectionError(failure.reason) from None
            return failure.status, failure.body or {"error": {"message": failure.reason}}


class ChatRequestError(Exception):
    """A chat request the front cannot take: answered with HTTP 400 and this message, as an engine would."""


def completion_payload(body: dict, prompt: str, settings: FrontSettings, upstream: Upstream) -> dict:
    """The engine's completions request for a chat request, with the host's choices applied."""
    payload: dict[str, Any] = dict(upstream.request_defaults)
    payload |= {"model": upstream.model, "prompt": prompt, "skip_special_tokens": False}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", DEFAULT_MAX_TOKENS))
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ChatRequestError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    payload["max_tokens"] = max_tokens
    for name in ("temperature", "top_p") if settings.sampling_honored else ():
        if body.get(name) is not None:
            payload[name] = body[name]
    if body.get("seed") is not None:
        payload["seed"] = body["seed"]
    # every message ends at <|end|> (llama.cpp stops there by itself) or at a call's <|call|>; the front decides
    # whether the turn goes on
    requested_stop = body.get("stop") or []
    payload["stop"] = [*harmony.MESSAGE_ENDS] + (
        [requested_stop] if isinstance(requested_stop, str) else list(requested_stop)
    )
    if body.get("logprobs"):
        payload["logprobs"] = int(body.get("top_logprobs") or 1)
    return payload


def chat_logprobs(completion_logprobs: dict | None) -> list[dict]:
    """A completions response's per-token log-probabilities in the chat API's shape (``logprobs.content``)."""
    if not completion_logprobs:
        return []
    tokens = completion_logprobs.get("tokens") or []
    values = completion_logprobs.get("token_logprobs") or []
    tops = completion_logprobs.get("top_logprobs") or [None] * len(tokens)
    return [
        {
            "token": token,
            "logprob": value,
            "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in (top or {}).items()],
        }
        for token, value, top in zip(tokens, values, tops)
    ]


def answer_chat(body: dict, settings: FrontSettings, source: str, upstream: Upstream) -> tuple[int, dict]:
    """The chat response to ``body``: the conversation rendered by the host's rules, generated by the engine
    (continued past an analysis message's end), split into reasoning and content."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("messages must be a non-empty list")
    if body.get("n", 1) != 1:
        raise ChatRequestError("n must be 1 (send one request per sample)")
    effort = body.get("reasoning_effort") if settings.effort_honored else None
    tools = body.get("tools") or None
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise ChatRequestError("tools must be a list of tool objects")
    try:
        prompt = render(source, messages, effort, tools=tools)
    except UserError as error:
        raise ChatRequestError(str(error)) from None
    payload = completion_payload(body, prompt, settings, upstream)
    budget, generated, tokens, prompt_tokens = payload["max_tokens"], "", [], 0
    finish = "length"
    for _ in range(harmony.MAX_MESSAGES):
        status, answer = upstream.post("completions", payload | {"prompt": prompt + generated, "max_tokens": budget})
        if status != 200:
            return status, answer
        choice = answer["choices"][0]
        usage = answer.get("usage") or {}
        prompt_tokens = prompt_tokens or int(usage.get("prompt_tokens", 0))
        budget -= int(usage.get("completion_tokens", 0))
        generated += choice["text"]
        tokens += chat_logprobs(choice.get("logprobs"))
        finish = choice.get("finish_reason") or "stop"
        if budget <= 0 or not harmony.turn_goes_on(generated, finish == "stop"):
            break
        generated += harmony.NEXT_ASSISTANT_MESSAGE
    turn = harmony.split_turn(generated)
    message: dict[str, Any] = {"role": "assistant", "content": turn.final}
    message[settings.reasoning_field] = turn.reasoning or None
    if turn.tool_calls:
        message["content"] = turn.final or None  # as OpenAI's API answers a turn that only calls
        message["tool_calls"] = [openai_tool_call(call) for call in turn.tool_calls]
        finish = "tool_calls"
    completion_tokens = payload["max_tokens"] - budget
    return 200, {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", upstream.model),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish,
                "logprobs": {"content": tokens} if body.get("logprobs") else None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def openai_tool_call(call: harmony.ToolCall) -> dict:
    """A harmony tool call in the chat API's shape: a function call with its arguments' JSON text."""
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call.function or call.recipient, "arguments": call.arguments},
    }


def _handler(settings: FrontSettings, source: str, upstream: Upstream, served_model: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # the engine's own log records the traffic
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") != "/v1/models":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            self._send(200, {"object": "list", "data": [{"id": served_model, "object": "model"}]})

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ChatRequestError("the request body must be a JSON object")
                if self.path.rstrip("/") == "/v1/chat/completions":
                    status, answer = answer_chat(body, settings, source, upstream)
                elif self.path.rstrip("/") == "/v1/completions":
                    payload = dict(upstream.request_defaults) | body | {"model": upstream.model}
                    if not settings.sampling_honored:
                        payload = {k: v for k, v in payload.items() if k not in ("temperature", "top_p")}
                    status, answer = upstream.post("completions", payload)
                else:
                    status, answer = 404, {"error": {"message": f"no route {self.path}"}}
            except (ValueError, ChatRequestError) as error:
                status, answer = 400, {"error": {"message": str(error), "type": "invalid_request_error"}}
            except OSError as error:
                status, answer = 502, {"error": {"message": f"the engine did not answer ({error})"}}
            self._send(status, answer)

    return Handler


@contextlib.contextmanager
def chat_front(
    upstream: Upstream, model_template: str | None, settings: FrontSettings, served_model: str, host: str, port: int
) -> Iterator[str]:
    """A running chat front for ``upstream`` on ``host:port``; yields its base URL (ending in /v1)."""
    source = template_source(settings.chat_template, model_template)
    server = ThreadingHTTPServer((host, port), _handler(settings, source, upstream, served_model))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="chat-front", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.shutdown()
        server.server_close()
