"""The one HTTP client of an OpenAI-compatible server: every request quantlab sends to a ``/v1`` route goes here.

Its users differ only in what a failure means to them, so the client raises one ``RequestFailed`` that says what
came back (an HTTP status and its JSON error body, a body that is not a JSON object, or nothing at all) and each
caller words it: a server quantlab started (``serve.Server``) makes it a one-line error naming the engine and its
log, the chat front passes an engine's HTTP error on to its own client unchanged, and the audit
(``stages.audit.client``) makes it a check it could not finish, after counting the request against its budget.

The standard library's ``urllib`` is the transport: the official ``openai`` package would add httpx and
pydantic models that reject the engines' extensions (``prompt_logprobs``, ``skip_special_tokens``) we read.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from quantlab.errors import UserError

DEFAULT_TIMEOUT_S = 300.0


class RequestFailed(Exception):
    """A request that brought back no JSON object: ``reason`` is one line; ``status`` the HTTP code (None when no
    answer came), ``body`` the server's JSON error body when it sent one, ``redirect`` the URL it redirected to."""

    def __init__(
        self, route: str, reason: str, status: int | None = None, body: dict | None = None, redirect: str = ""
    ):
        super().__init__(f"{route}: {reason}")
        self.route, self.reason, self.status, self.body, self.redirect = route, reason, status, body, redirect

    @property
    def unreachable(self) -> bool:
        """No answer came at all: nothing listens there, or the connection broke."""
        return self.status is None and not self.redirect


class _Redirected(Exception):
    def __init__(self, status: int, url: str):
        self.status, self.url = status, url


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise _Redirected(code, newurl)


def base_url_of(url: str) -> str:
    """A server's base URL (ending in /v1); a one-line error for a URL that is not http(s)://host[:port]/..."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"endpoint {url!r}: give an http(s) URL such as http://127.0.0.1:8000/v1")
    path = parsed.path.rstrip("/")
    return urllib.parse.urlunparse(parsed._replace(path=path if path.endswith("/v1") else path + "/v1"))


@dataclass
class OpenAIClient:
    """Requests to one server's ``base_url`` (ending in /v1); ``model`` is the name requests carry.
    ``follow_redirects=False`` refuses a redirect (it could send the traffic, and the prompts, elsewhere)."""

    base_url: str
    model: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
    follow_redirects: bool = True
    _opener: Any = field(default=None, repr=False)

    def __post_init__(self):
        handlers = [] if self.follow_redirects else [_RefuseRedirects]
        self._opener = urllib.request.build_opener(*handlers)

    def request(self, route: str, payload: dict | None = None, timeout_s: float | None = None) -> dict:
        """The JSON object ``route`` answers: GET without a payload, POST with one."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(f"{self.base_url}/{route}", data, {"Content-Type": "application/json"})
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            with self._opener.open(request, timeout=timeout_s) as response:
                body = response.read()
        except _Redirected as redirect:
            raise RequestFailed(
                route, f"redirected to {redirect.url}", redirect.status, redirect=redirect.url
            ) from None
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            detail = text.strip().replace("\n", " ")[:300] or str(error.reason)
            raise RequestFailed(route, f"HTTP {error.code} ({detail})", error.code, _json_object(text)) from None
        except TimeoutError:
            raise RequestFailed(route, f"no answer within {timeout_s:.0f} s") from None
        except urllib.error.URLError as error:
            raise RequestFailed(route, f"cannot reach {self.base_url} ({error.reason})") from None
        except OSError as error:
            raise RequestFailed(route, f"the connection failed ({error})") from None
        try:
            value = json.loads(body)
        except ValueError:
            raise RequestFailed(route, f"the answer is not JSON ({body[:80]!r})") from None
        if not isinstance(value, dict):
            raise RequestFailed(route, "the answer is not a JSON object")
        return value

    def post(self, route: str, payload: dict, timeout_s: float | None = None) -> dict:
        """``request`` with the client's model name filled in where the payload gives none."""
        return self.request(route, {"model": self.model} | payload, timeout_s)

    def served_models(self, timeout_s: float | None = None) -> list[str]:
        """The model names ``GET /v1/models`` lists, in its order."""
        answer = self.request("models", timeout_s=timeout_s)
        data = answer.get("data")
        if not isinstance(data, list):
            raise RequestFailed("models", "the answer has no data list")
        return [str(entry["id"]) for entry in data if isinstance(entry, dict) and "id" in entry]

    def ready(self) -> bool:
        """Whether the server answers ``GET /v1/models`` within two seconds."""
        try:
            self.request("models", timeout_s=2.0)
        except RequestFailed:
            return False
        return True


def _json_object(body: bytes | str) -> dict | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
