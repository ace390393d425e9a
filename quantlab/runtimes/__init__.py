"""Runtimes: the engines that run a variant, each registered under the name ``--backend`` takes.

A runtime answers lm-eval's requests (log-likelihoods, generation) for one subject, seeded per repeat:

* ``hf``: the variant's Hugging Face model in-process (transformers), as built;
* ``llama.cpp``: llama-cpp-python on the variant's GGUF export (``quantlab.runtimes.llama_cpp``);
* ``endpoint``: an OpenAI-compatible server someone else runs (lm-eval's completions client, prompts rendered here);
* ``served``: the same client against a server quantlab starts for the evaluation (``quantlab.runtimes.serve``:
  vLLM or llama.cpp's server, ``--engine``) and stops after it.

Adding an engine is one ``Runtime`` subclass here; nothing else names the engines. A stage that compares
log-probabilities opens the subject's ``Session`` (``quantlab.runtimes.sessions.open_session``).
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
    "Loaded",
    "Runtime",
    "RuntimeSettings",
    "evaluation_context",
    "get_runtime",
    "named_backend",
    "render_chat",
    "runs_as_built",
    "runtime_label",
]


@dataclass
class Loaded:
    """What every repeat of an evaluation shares: the subject's folder, its model and tokenizer (loaded once)."""

    folder: Path  # the Hugging Face model folder
    model: Any
    tokenizer: Any
    gguf: Path | None = None  # the variant's GGUF export, when it has one
    chat_template: str | None = None  # the Jinja source prompts are rendered with (None: no chat template)
    server: Any = None  # the running server of a served evaluation (quantlab.runtimes.serve.Server)

    def chat_template_args(self, settings: RuntimeSettings) -> dict:
        """The keyword arguments of ``apply_chat_template`` these settings ask for: a template other than the
        tokenizer's own, and the reasoning effort where one is asked."""
        args: dict[str, Any] = {}
        if self.chat_template is not None and self.chat_template != getattr(self.tokenizer, "chat_template", None):
            args["chat_template"] = self.chat_template
        return args | settings.chat_template_args()

    @property
    def context_length(self) -> int:
        return evaluation_context(int(self.model.config.max_position_embeddings))


DEFAULT_BACKEND = "hf"  # what an evaluation runs on when no --backend is given


class Runtime(Registered):
    kind: ClassVar[str] = "backend"
    _entries: ClassVar[dict[str, Registered]] = {}
    # The model runs outside this process (a server) or from a mapped file (llama.cpp): a client needs the
    # subject's tokenizer and config, not its weights in memory.
    runs_elsewhere: ClassVar[bool] = False
    runs_as_built: ClassVar[bool] = False  # the variant's own model in-process: what other runtimes are held to
    needs_endpoint: ClassVar[bool] = False  # it is pointed at a server someone else runs (--endpoint)
    runs_the_gguf_export: ClassVar[bool] = False  # it runs the variant's GGUF file in-process
    accepts_engine: ClassVar[bool] = False  # --engine may serve the subject for it
    # A report names it beside the decoding settings; not for the default runtime, nor for a served one (its
    # engine is named instead).
    named_in_reports: ClassVar[bool] = True

    def check(self, subject: Subject, settings: RuntimeSettings) -> None:
        """A one-line error when this runtime cannot run the subject with these settings."""

    def language_model(self, loaded: Loaded, settings: RuntimeSettings, seed: int, batch_size: int):
        """The lm-eval model of one repeat."""
        raise NotImplementedError


class Transformers(Runtime, name="hf"):
    runs_as_built = True
    named_in_reports = False
    accepts_engine = True  # --engine alone: the subject served, the same client as ``served``

    def language_model(self, loaded, settings, seed, batch_size):
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(
            pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size, max_length=loaded.context_length
        )
        # Set after construction: lm-eval 0.4.11 drops chat_template_args unless enable_thinking is given.
        lm.chat_template_args = loaded.chat_template_args(settings)
        return lm


class LlamaCpp(Runtime, name="llama.cpp"):
    runs_elsewhere = True
    runs_the_gguf_export = True

    def check(self, subject, settings):
        if subject.gguf is None:
            raise UserError(
                f"backend llama.cpp: {subject.name} has no GGUF export; build it with exports: [gguf] in its recipe"
            )

    def language_model(self, loaded, settings, seed, batch_size):
        # on use: lm-eval's client classes load lm-eval (the CLI imports this module at start)
        from quantlab.runtimes.llama_cpp_lm import LlamaCppLM

        return LlamaCppLM(
            loaded.gguf,
            loaded.tokenizer,
            loaded.context_length,
            seed=seed,
            temperature=settings.temperature,
            top_p=settings.top_p,
            chat_template=loaded.chat_template,
            chat_template_args=loaded.chat_template_args(settings),
        )


class Endpoint(Runtime, name="endpoint"):
    runs_elsewhere = True
    needs_endpoint = True

    def check(self, subject, settings):
        if not settings.endpoint:
            raise UserError("backend endpoint: give the server's base URL, e.g. --endpoint http://127.0.0.1:8000/v1")

    def language_model(self, loaded, settings, seed, batch_size):
        assert settings.endpoint is not None  # check() refused a run without one
        return self.client(loaded, settings, settings.endpoint, loaded.folder.parent.name)

    @staticmethod
    def client(loaded: Loaded, settings: RuntimeSettings, base_url: str, model: str, concurrent: int = 1):
        # lm-eval's OpenAI-compatible completions client: text prompts rendered here with the evaluation's chat
        # template (the server tokenizes), the variant's tokenizer for lm-eval's own bookkeeping; log-likelihoods
        # through echo + logprobs.
        from quantlab.runtimes.completions_lm import RenderedCompletionsLM

        return RenderedCompletionsLM(
            chat_template=loaded.chat_template,
            chat_template_args=loaded.chat_template_args(settings),
            base_url=base_url.rstrip("/") + "/completions",
            model=model,
            tokenizer_backend="huggingface",
            tokenizer=str(loaded.folder),
            tokenized_requests=False,
            max_length=loaded.context_length,
            num_concurrent=concurrent,
            max_retries=2,
        )


class Served(Runtime, name="served"):
    """A server quantlab starts (``--engine``): lm-eval's completions client, as for an endpoint, with the
    requests a serving stack's users send concurrently (the engine batches them)."""

    runs_elsewhere = True
    accepts_engine = True
    named_in_reports = False

    def check(self, subject, settings):
        if not settings.engine:
            raise UserError("backend served: name the engine, --engine vllm or --engine llama.cpp")

    def language_model(self, loaded, settings, seed, batch_size):
        server = loaded.server
        return Endpoint.client(loaded, settings, server.base_url, server.model, settings.concurrent or 1)


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
