"""How a runtime is asked to run a subject: one frozen record, which is also part of the cache key's input.

Nothing changes a ``RuntimeSettings`` after it is made; what a run derives from it (a generation length the task
left open, a length clamped to the model's context) is recorded beside it, never written into it. A run on a Ray
worker and a sequential run therefore store the same settings by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RuntimeSettings:
    """What decides a runtime's answers: which runtime, how it samples, how prompts are rendered, where it is."""

    backend: str = "hf"  # a runtime's registered name (``quantlab.runtimes.Runtime``)
    temperature: float = 0.0
    top_p: float = 1.0
    chat_template: str = "plain"  # a name of ``quantlab.chat`` or a Jinja file's path
    chat_template_sha256: str | None = None  # a file's template: the hash of its text
    reasoning_effort: str | None = None  # what reaches the template (None: its default)
    endpoint: str | None = None  # backend ``endpoint``: the server's base URL
    # A served evaluation (backend ``served``): the engine, what it loaded and the request fields that keep it
    # faithful (``quantlab.runtimes.engines``); never its port, which changes every start.
    engine: str | None = None
    engine_version: str | None = None
    loaded: str | None = None
    concurrent: int | None = None
    request_defaults: Mapping[str, Any] | None = None
    dtype: str | None = None
    load: str | None = None

    # Fields written only when set, so that a setting the run did not ask for leaves the key as it was.
    _OPTIONAL = (
        "chat_template_sha256",
        "reasoning_effort",
        "endpoint",
        "engine",
        "engine_version",
        "loaded",
        "concurrent",
        "request_defaults",
        "dtype",
        "load",
    )

    def record(self) -> dict[str, Any]:
        """The settings as stored (and hashed): every field, but optional ones only when set."""
        out: dict[str, Any] = {"backend": self.backend, "temperature": self.temperature, "top_p": self.top_p}
        out["chat_template"] = self.chat_template
        for name in self._OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                out[name] = dict(value) if isinstance(value, Mapping) else value
        if self.engine is not None:  # a served run stores its request defaults even when the engine has none
            out["request_defaults"] = dict(self.request_defaults) if self.request_defaults else None
        return out

    def chat_template_args(self) -> dict[str, Any]:
        """The template keyword arguments these settings ask for beyond the template itself: the effort."""
        return {"reasoning_effort": self.reasoning_effort} if self.reasoning_effort else {}

    @property
    def label(self) -> str:
        """What ran: the in-process runtime, or the served engine with what it loaded and its dtype."""
        return runtime_label(self.record())


def runtime_label(settings: Mapping[str, Any]) -> str:
    """What ran an evaluation, from its stored settings: the in-process runtime, or the served engine with what it
    loaded and its dtype."""
    if settings.get("engine"):
        return f"{settings['engine']} ({settings['loaded']}, {settings['dtype']})"
    backend = settings.get("backend", "hf")
    return "transformers" if backend == "hf" else backend
