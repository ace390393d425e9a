"""Runtimes: what runs a variant, each registered under the name ``--backend`` takes.

* ``hf``: the variant's Hugging Face model in-process (transformers), as built;
* ``llama.cpp``: llama-cpp-python on the variant's GGUF export (``quantlab.runtimes.llama_cpp``);
* ``endpoint``: an OpenAI-compatible server someone else runs (lm-eval's completions client, prompts rendered here);
* ``served``: the same client against a server quantlab starts (``quantlab.runtimes.serve``: vLLM or llama.cpp's
  server, ``--engine``) and stops after it.

A ``Runtime`` says whether it can run a subject with given settings and what a stage may ask of it (capability
flags, so that no stage compares its name). Its ``Session`` (``quantlab.runtimes.sessions``, declared with
``runtime=`` the same name) opens it and answers next-token log-probabilities, generates, and gives lm-eval its
model; ``open_session`` checks the one and opens the other. Adding a runtime is one ``Runtime`` subclass here and
one ``Session`` subclass there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from quantlab.errors import UserError
from quantlab.registry import Registered
from quantlab.runtimes.context import MAX_EVALUATION_CONTEXT, evaluation_context
from quantlab.runtimes.prompts import render_chat
from quantlab.runtimes.settings import RuntimeSettings, runtime_label
from quantlab.store import Subject

__all__ = [
    "MAX_EVALUATION_CONTEXT",
    "Prompting",
    "Runtime",
    "RuntimeSettings",
    "evaluation_context",
    "get_runtime",
    "named_backend",
    "render_chat",
    "runs_as_built",
    "runtime_label",
]


@dataclass(frozen=True)
class Prompting:
    """How an evaluation's requests reach a session, whatever runs the model: the subject's Hugging Face folder,
    its config and tokenizer (lm-eval's bookkeeping; the config records the experts' kernel transformers chose),
    the Jinja source prompts are rendered with (None: no chat template) and its arguments (the effort)."""

    folder: Path
    config: Any
    tokenizer: Any
    chat_template: str | None
    chat_template_args: dict[str, Any]

    @classmethod
    def of(cls, folder: Path, config, tokenizer, chat_template: str | None, settings: RuntimeSettings) -> Prompting:
        """How prompts reach the subject under ``settings``: its template arguments are a template other than the
        tokenizer's own, and the reasoning effort where one is asked."""
        args: dict[str, Any] = {}
        if chat_template is not None and chat_template != getattr(tokenizer, "chat_template", None):
            args["chat_template"] = chat_template
        return cls(folder, config, tokenizer, chat_template, args | settings.chat_template_args())

    @property
    def context_length(self) -> int:
        return evaluation_context(int(self.config.max_position_embeddings))


DEFAULT_BACKEND = "hf"  # what an evaluation runs on when no --backend is given


class Runtime(Registered):
    kind: ClassVar[str] = "backend"
    _entries: ClassVar[dict[str, Registered]] = {}
    # The model runs outside this process (a server) or from a mapped file (llama.cpp): a client needs the
    # subject's tokenizer and config, not its weights in memory.
    runs_elsewhere: ClassVar[bool] = False
    runs_as_built: ClassVar[bool] = False  # the variant's own model in-process: what other runtimes are held to
    needs_endpoint: ClassVar[bool] = False  # it is pointed at a server someone else runs (--endpoint)
    accepts_engine: ClassVar[bool] = False  # --engine may serve the subject for it
    # A report names it beside the decoding settings; not for the default runtime, nor for a served one (its
    # engine is named instead).
    named_in_reports: ClassVar[bool] = True

    def check(self, subject: Subject, settings: RuntimeSettings) -> None:
        """A one-line error when this runtime cannot run the subject with these settings."""


class Transformers(Runtime, name="hf"):
    runs_as_built = True
    named_in_reports = False
    accepts_engine = True  # --engine alone: the subject served, the same client as ``served``


class LlamaCpp(Runtime, name="llama.cpp"):
    runs_elsewhere = True

    def check(self, subject, settings):
        if subject.gguf is None:
            raise UserError(
                f"backend llama.cpp: {subject.name} has no GGUF export; build it with exports: [gguf] in its recipe"
            )


class Endpoint(Runtime, name="endpoint"):
    runs_elsewhere = True
    needs_endpoint = True

    def check(self, subject, settings):
        if not settings.endpoint:
            raise UserError("backend endpoint: give the server's base URL, e.g. --endpoint http://127.0.0.1:8000/v1")


class Served(Runtime, name="served"):
    """A server quantlab starts (``--engine``): lm-eval's completions client, as for an endpoint, with the
    requests a serving stack's users send concurrently (the engine batches them)."""

    runs_elsewhere = True
    accepts_engine = True
    named_in_reports = False

    def check(self, subject, settings):
        if not settings.engine:
            raise UserError("backend served: name the engine, --engine vllm or --engine llama.cpp")


def runs_as_built(settings: dict) -> bool:
    """Whether stored evaluation settings name the runtime the others are held to (the model in-process)."""
    return get_runtime(settings.get("backend", DEFAULT_BACKEND)).runs_as_built


def named_backend(settings: Mapping[str, Any]) -> str | None:
    """The backend stored evaluation settings name, where a report names it (None: the default, or a served
    run, which is named by its engine)."""
    backend = settings.get("backend")
    return backend if backend is not None and get_runtime(backend).named_in_reports else None


def get_runtime(name: str) -> Runtime:
    """The runtime ``--backend`` names; a one-line error listing the available ones otherwise."""
    return Runtime.lookup(name)
