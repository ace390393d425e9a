"""The audit's only way out: requests to the one endpoint it was given, counted, bounded, and read defensively.

Every request goes to ``<base_url>/<route>`` through the lab's one OpenAI client (``runtimes.openai_client``);
redirects are refused (a redirect could send the traffic, and the
prompts, elsewhere). A refusal, a timeout, an HTTP error, a body that is not the JSON the OpenAI API describes, or
a check's query budget running out is a ``CouldNotCheck`` with the reason: the check that hit it says "could not
check", and the audit goes on with the others.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

from quantlab.chat import MODEL, harmony
from quantlab.plugins import Probe
from quantlab.runtimes.openai_client import OpenAIClient, RequestFailed
from quantlab.stages.audit.local import LocalModel

REQUEST_TIMEOUT_S = 120.0
CHAT, COMPLETIONS = "chat", "completions"  # the two routes an audit asks through (--api)
CONCURRENT_REQUESTS = 8


class CouldNotCheck(Exception):
    """The endpoint did not let a check finish: the message says why (one line)."""


@dataclass(frozen=True)
class ChatAnswer:
    """One chat response, read: the final text, the reasoning (from the field the endpoint uses, or from harmony
    channels left in the content), the field it came from, the finish reason, and the token log-probabilities
    (per generated token: its text and {token text: log-probability} of the top ones) when asked."""

    content: str
    reasoning: str
    reasoning_field: str | None  # reasoning_content, reasoning, "content" (channels inline) or None (none returned)
    finish_reason: str
    raw: dict


@dataclass(frozen=True)
class CompletionAnswer:
    text: str
    finish_reason: str
    tokens: list[str]
    top_logprobs: list[dict[str, float]]
    raw: dict


@dataclass
class EndpointClient:
    """Requests to one endpoint, counted against a check's budget (``spend``)."""

    base_url: str
    model: str = ""
    timeout_s: float = REQUEST_TIMEOUT_S
    queries: int = 0
    budget: int | None = None  # queries the running check may still send (None: no limit)
    # vLLM's and llama.cpp's extension that keeps the harmony markers in the text; an endpoint that refuses
    # unknown fields (HTTP 400) is asked again without it, and never with it after
    special_tokens_field: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @cached_property
    def _http(self) -> OpenAIClient:
        return OpenAIClient(self.base_url, timeout_s=self.timeout_s, follow_redirects=False)

    # --- transport ------------------------------------------------------------------------------------
    def _count(self) -> None:
        with self._lock:
            if self.budget is not None and self.budget <= 0:
                raise CouldNotCheck("the check's query budget ran out before it finished; give a larger --budget")
            if self.budget is not None:
                self.budget -= 1
            self.queries += 1

    def request(self, route: str, payload: dict | None = None) -> dict:
        """The JSON object ``route`` answers (GET without a payload, POST with one), counted."""
        self._count()
        try:
            return self._http.request(route, payload)
        except RequestFailed as failure:
            if failure.redirect:
                raise CouldNotCheck(
                    f"the endpoint redirected to {failure.redirect}; the audit sends nothing but to the URL it was given"
                ) from None
            raise CouldNotCheck(str(failure)) from None

    def map(self, function, items: list) -> list:
        """``function`` over ``items``, several requests in flight (a provider batches them), in order."""
        with ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS) as pool:
            return list(pool.map(function, items))

    # --- the two routes, read -------------------------------------------------------------------------
    def served_model(self) -> str:
        """The model name the endpoint lists first (GET /v1/models)."""
        answer = self.request("models")
        try:
            return str(answer["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise CouldNotCheck("models: the answer lists no model (data[0].id)") from None

    def chat(self, messages: list[dict], **fields) -> ChatAnswer:
        answer = self.request("chat/completions", {"model": self.model, "messages": messages} | fields)
        try:
            choice = answer["choices"][0]
            message = choice["message"]
            content = message.get("content") or ""
            finish = str(choice.get("finish_reason"))
        except (KeyError, IndexError, TypeError, AttributeError):
            raise CouldNotCheck("chat/completions: the answer has no choices[0].message") from None
        if not isinstance(content, str):
            raise CouldNotCheck("chat/completions: choices[0].message.content is not a string")
        field_name = next((name for name in harmony.REASONING_FIELDS if isinstance(message.get(name), str)), None)
        reasoning = message.get(field_name, "") if field_name else ""
        if field_name is None and harmony.MESSAGE in content:  # the channels left in the content
            turn = harmony.split_turn(content)
            field_name, reasoning, content = "content", turn.reasoning, turn.final
        return ChatAnswer(content.strip(), reasoning or "", field_name, finish, answer)

    def turn(
        self,
        api: str,
        renderer: LocalModel,
        probe: Probe,
        effort: str | None,
        max_tokens: int,
        template: str = MODEL,
        **sampling,
    ) -> harmony.Turn:
        """The endpoint's turn for ``probe`` at ``effort`` (None: none asked) through ``api``: the chat route
        (the endpoint renders), or the completions route with the prompt ``renderer`` renders with ``template``."""
        if api == CHAT:
            extra = {} if effort is None else {"reasoning_effort": effort}
            answer = self.chat(probe.messages, max_tokens=max_tokens, **extra, **sampling)
            return harmony.Turn(answer.reasoning, answer.content, True)
        prompt = renderer.prompt(probe.messages, effort, template)
        completion = self.complete(prompt, max_tokens=max_tokens, skip_special_tokens=False, **sampling)
        return harmony.split_turn(completion.text)

    def complete(self, prompt: str, **fields) -> CompletionAnswer:
        if not self.special_tokens_field:
            fields.pop("skip_special_tokens", None)
        try:
            answer = self.request("completions", {"model": self.model, "prompt": prompt} | fields)
        except CouldNotCheck as error:
            if "HTTP 400" not in str(error) or "skip_special_tokens" not in fields:
                raise
            self.special_tokens_field = False
            fields.pop("skip_special_tokens")
            answer = self.request("completions", {"model": self.model, "prompt": prompt} | fields)
        try:
            choice = answer["choices"][0]
            text = choice["text"]
            finish = str(choice.get("finish_reason"))
            logprobs = choice.get("logprobs") or {}
            tokens = list(logprobs.get("tokens") or [])
            tops = [dict(top or {}) for top in (logprobs.get("top_logprobs") or [])]
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise CouldNotCheck("completions: the answer has no choices[0].text") from None
        if not isinstance(text, str):
            raise CouldNotCheck("completions: choices[0].text is not a string")
        return CompletionAnswer(text, finish, tokens, tops, answer)
