"""A model running in one runtime, asked for what every comparison needs: the next token's log-probabilities.

A ``Session`` is one subject in one runtime: transformers in-process, llama.cpp on a GGUF file, or a server
(an engine quantlab started, or any OpenAI-compatible endpoint that returns prompt log-probabilities). It also
generates, stopping at given token ids (a server in its protocol's request: ``quantlab.runtimes.protocols``), and
gives lm-eval its model (every runtime). The
stages compare a session against a session (``compare_next_tokens``) through the pure statistics of
``quantlab.token_statistics``: the full KL where both sides give every token's logit, the top-k bound where a
server gives only its top log-probabilities. Nothing else computes a runtime's logits.

``open_session`` opens the one a ``RuntimeSettings`` names for a subject; the lower-level constructors take a
model already in memory (a baseline, a variant's dequantized weights) or a file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from quantlab.errors import UserError
from quantlab.models.loading import load_model
from quantlab.runtimes import Prompting, RuntimeSettings, get_runtime, llama_cpp
from quantlab.runtimes.engines import context_length_of, get_engine
from quantlab.runtimes.openai_client import OpenAIClient, RequestFailed
from quantlab.runtimes.protocols import UNKNOWN_ENDPOINT, Protocol, get_protocol
from quantlab.runtimes.serve import ServeOptions, serve
from quantlab.store import Subject
from quantlab.token_statistics import token_statistics, topk_token_statistics

T = TypeVar("T")
U = TypeVar("U")

CONCURRENT_REQUESTS = 8  # prompts in flight to a server at once: the engine batches them, as it batches its users'


class Session:
    """One subject running in one runtime. ``name`` says which runtime (and version) answered.

    A subclass declared with ``runtime=NAME`` is the session the runtime registered as NAME (``--backend``) opens:
    ``open_session`` asks it, through ``opened``, so no flag or name of a runtime is compared here."""

    name: ClassVar[str] = "session"
    # Every token's logit (transformers, llama.cpp); else only the top log-probabilities a server returns.
    full_distribution: ClassVar[bool] = True
    _of_runtime: ClassVar[dict[str, type[Session]]] = {}

    def __init_subclass__(cls, runtime: str | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if runtime is not None:
            Session._of_runtime[runtime] = cls

    @classmethod
    def of_runtime(cls, runtime: str) -> type[Session]:
        """The session class the runtime registered as ``runtime`` opens."""
        return Session._of_runtime[runtime]

    @classmethod
    def opened(cls, subject: Subject, settings: RuntimeSettings, store=None) -> Session:
        """This runtime's session of ``subject`` under ``settings`` (which its runtime's check accepted)."""
        raise NotImplementedError(f"{cls.name} sessions are made from a model or file, not opened by name")

    def logits(self, ids: list[int]) -> torch.Tensor:
        """(len(ids), vocabulary) float32: at each position, the logits of the token that follows it."""
        raise NotImplementedError(f"{self.name} returns no logits, only top log-probabilities")

    def top_logprobs(self, ids: list[int], top_k: int) -> list[dict[int, float]]:
        """Per position 1..n-1 of ``ids``: token id -> log-probability of the ``top_k`` most likely tokens and of
        the prompt's own token there, as an OpenAI-compatible server returns its prompt log-probabilities."""
        log_p = torch.log_softmax(self.logits(ids)[:-1], dim=-1)
        values, indices = log_p.topk(min(top_k, log_p.shape[-1]), dim=-1)
        out = []
        for position, (top_ids, top_values) in enumerate(zip(indices.tolist(), values.tolist())):
            entry = dict(zip(top_ids, top_values))
            entry.setdefault(ids[position + 1], float(log_p[position, ids[position + 1]]))
            out.append(entry)
        return out

    def generate(
        self,
        prompts: list[str],
        limits: list[int],
        stops: list[int],
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[tuple[str, int, bool]]:
        """Each prompt's continuation, generated until a token of ``stops`` or its limit: (its text, special tokens
        kept, without the token it stopped at; the tokens it took; whether it stopped at a stop token). Greedy at
        temperature 0, else sampled with ``seed``."""
        raise NotImplementedError(f"{self.name} does not generate here; ask its server")

    def language_model(self, prompting: Prompting, settings: RuntimeSettings, seed: int, batch_size: int):
        """lm-eval's model of one repeat of an evaluation (seeded where the runtime samples itself)."""
        raise NotImplementedError(f"{self.name} gives lm-eval no model")

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        """Releases what the session holds (a llama.cpp context, a server it started)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TransformersSession(Session, runtime="hf"):
    """A Hugging Face model in memory, run in float32 unless it was loaded otherwise; its ``tokenizer`` where
    the session generates from text."""

    name = "transformers"

    def __init__(self, model, tokenizer=None):
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def opened(cls, subject, settings, store=None):
        return cls(*load_model(subject.model_folder, dtype=torch.float32))

    @torch.no_grad()
    def generate(self, prompts, limits, stops, temperature=0.0, top_p=1.0, seed=0):
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            torch.manual_seed(seed)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        out = self.model.generate(
            **batch, max_new_tokens=max(limits), pad_token_id=tokenizer.pad_token_id, eos_token_id=stops, **sampling
        )
        results = []
        for row, limit in zip(out[:, batch["input_ids"].shape[1] :].tolist(), limits):
            row = row[:limit]
            stop_at = next((i for i, token in enumerate(row) if token in stops), None)
            kept = row if stop_at is None else row[:stop_at]
            # the stop token is not counted, as llama.cpp's usage does not count it
            results.append((tokenizer.decode(kept, skip_special_tokens=False), len(kept), stop_at is not None))
        return results

    @torch.no_grad()
    def logits(self, ids):
        return self.model(torch.tensor([ids])).logits[0].float()

    def language_model(self, prompting, settings, seed, batch_size):
        from lm_eval.models.huggingface import HFLM  # lm-eval loads only for an evaluation

        lm = HFLM(
            pretrained=self.model,
            tokenizer=prompting.tokenizer,
            batch_size=batch_size,
            max_length=prompting.context_length,
        )
        # Set after construction: lm-eval 0.4.11 drops chat_template_args unless enable_thinking is given.
        lm.chat_template_args = dict(prompting.chat_template_args)
        return lm


class LlamaCppSession(Session, runtime="llama.cpp"):
    """llama.cpp (llama-cpp-python) in-process on a GGUF file, with a context of ``n_ctx`` positions; the file is
    mapped on the first request (an evaluation's repeats open their own, each with its seed)."""

    name = "llama.cpp"

    def __init__(self, path: Path, n_ctx: int, seed: int = 0, n_threads: int | None = None):
        self.path, self.n_ctx, self.seed, self.n_threads = path, n_ctx, seed, n_threads
        self._llm: Any = None

    @classmethod
    def opened(cls, subject, settings, store=None):
        assert subject.gguf is not None  # the runtime's check refused a subject without one
        return cls(subject.gguf, context_length_of(subject.model_folder))

    @property
    def llm(self):
        if self._llm is None:
            self._llm = llama_cpp.open_gguf(self.path, self.n_ctx, seed=self.seed, n_threads=self.n_threads)
        return self._llm

    def logits(self, ids):
        return torch.from_numpy(llama_cpp.logits(self.llm, ids))

    def generate(self, prompts, limits, stops, temperature=0.0, top_p=1.0, seed=0):
        # one prompt at a time in the one context; each seeded alike, as transformers seeds a batch once
        return [llama_cpp.generate(self.llm, p, n, stops, temperature, top_p, seed) for p, n in zip(prompts, limits)]

    def language_model(self, prompting, settings, seed, batch_size):
        # on use: lm-eval's client classes load lm-eval (measure and the audit open sessions without it)
        from quantlab.runtimes.llama_cpp_lm import LlamaCppLM

        return LlamaCppLM(
            self.path,
            prompting.tokenizer,
            prompting.context_length,
            seed=seed,
            temperature=settings.temperature,
            top_p=settings.top_p,
            chat_template=prompting.chat_template,
            chat_template_args=prompting.chat_template_args,
        )

    def describe(self) -> str:
        return llama_cpp.version()

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()


def completions_client(prompting: Prompting, base_url: str, model: str, concurrent: int = 1):
    """lm-eval's OpenAI-compatible completions client: text prompts rendered here with the evaluation's chat
    template (the server tokenizes), the variant's tokenizer for lm-eval's own bookkeeping; log-likelihoods
    through echo + logprobs."""
    # on use: lm-eval's client classes load lm-eval (measure and the audit open sessions without it)
    from quantlab.runtimes.completions_lm import RenderedCompletionsLM

    return RenderedCompletionsLM(
        chat_template=prompting.chat_template,
        chat_template_args=prompting.chat_template_args,
        base_url=base_url.rstrip("/") + "/completions",
        model=model,
        tokenizer_backend="huggingface",
        tokenizer=str(prompting.folder),
        tokenized_requests=False,
        max_length=prompting.context_length,
        num_concurrent=concurrent,
        max_retries=2,
    )


class ServedSession(Session, runtime="served"):
    """A running server (``quantlab.runtimes.serve.Server``) whose engine returns prompt log-probabilities by
    token id; ``stop``: the context that started it, left when the session closes (None: someone else's)."""

    name = "served"
    full_distribution = False

    def __init__(self, server, stop: contextlib.AbstractContextManager | None = None):
        self.server, self.protocol, self._stop = server, get_engine(server.engine).speaks(), stop

    @classmethod
    def opened(cls, subject, settings, store=None):
        """A server of ``settings.engine`` started for the subject, stopped when the session closes."""
        assert settings.engine is not None  # the runtime's check refused a run without one
        options = ServeOptions(dtype=settings.dtype or "auto", load=settings.load or "auto")
        stop = serve(subject, settings.engine, store, options=options)
        return cls(stop.__enter__(), stop)

    def top_logprobs(self, ids, top_k):
        return self.protocol.prompt_logprobs(self.server, ids, top_k)

    def generate(self, prompts, limits, stops, temperature=0.0, top_p=1.0, seed=0):
        return generate_in_flight(self.protocol, self.server, prompts, limits, stops, temperature, top_p, seed)

    def language_model(self, prompting, settings, seed, batch_size):
        # the requests a serving stack's users send concurrently (the engine batches them)
        return completions_client(prompting, self.server.base_url, self.server.model, settings.concurrent or 1)

    def describe(self) -> str:
        return self.server.engine

    def close(self) -> None:
        stop, self._stop = self._stop, None
        if stop is not None:
            stop.__exit__(None, None, None)


class EndpointSession(Session, runtime="endpoint"):
    """An OpenAI-compatible endpoint someone else runs, asked for its prompt log-probabilities in ``protocol``'s
    request (an engine's extension of the completions route; vLLM's for an endpoint of unknown make)."""

    name = "endpoint"
    full_distribution = False

    def __init__(self, base_url: str, model: str, protocol: Protocol):
        self.client, self.protocol = OpenAIClient(base_url, model), protocol

    @classmethod
    def opened(cls, subject, settings, store=None):
        assert settings.endpoint is not None  # the runtime's check refused a run without one
        return cls(settings.endpoint, subject.name, get_protocol(UNKNOWN_ENDPOINT))

    def top_logprobs(self, ids, top_k):
        try:
            return self.protocol.prompt_logprobs(self.client, ids, top_k)
        except RequestFailed as failure:
            raise UserError(
                f"endpoint {self.client.base_url}: {failure}; it must answer {self.protocol.name}'s prompt_logprobs"
            ) from None

    def generate(self, prompts, limits, stops, temperature=0.0, top_p=1.0, seed=0):
        try:
            return generate_in_flight(self.protocol, self.client, prompts, limits, stops, temperature, top_p, seed)
        except RequestFailed as failure:
            raise UserError(
                f"endpoint {self.client.base_url}: {failure}; it must take {self.protocol.name}'s stop_token_ids"
            ) from None

    def language_model(self, prompting, settings, seed, batch_size):
        # the model name the variant's folder gives (a served model's name, as quantlab serve names it)
        return completions_client(prompting, self.client.base_url, prompting.folder.parent.name)

    def describe(self) -> str:
        return f"endpoint {self.client.base_url}"


def open_session(subject: Subject, settings: RuntimeSettings, store=None) -> Session:
    """The session ``settings`` name for ``subject``: its model in-process (float32), its GGUF export in
    llama.cpp, a server started with ``settings.engine`` (stopped when the session closes), or the endpoint at
    ``settings.endpoint``. Close it when done (it is a context manager)."""
    get_runtime(settings.backend).check(subject, settings)
    return Session.of_runtime(settings.backend).opened(subject, settings, store)


def in_flight(function: Callable[[T], U], items: list[T]) -> list[U]:
    """``function`` over ``items`` with several requests to a server in flight at once, in order (an interrupted
    run drops the requests not yet sent, so that the server stops at once)."""
    pool = ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS)
    try:
        return list(pool.map(function, items))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def generate_in_flight(
    protocol: Protocol, server, prompts: list[str], limits: list[int], stops: list[int], temperature, top_p, seed
) -> list[tuple[str, int, bool]]:
    """``Session.generate`` on a server: one request per prompt in ``protocol``'s form, several in flight (the
    engine batches them), each seeded alike, as transformers seeds a batch once."""
    jobs = list(zip(prompts, limits))
    return in_flight(lambda job: protocol.generate(server, job[0], job[1], stops, temperature, top_p, seed), jobs)


def served_answers(candidate: Session, rows: list[list[int]], top_k: int) -> list[list[dict[int, float]]]:
    """A server's top log-probabilities for each row, several rows in flight at once."""
    return in_flight(lambda ids: candidate.top_logprobs(ids, top_k), rows)


def compare_next_tokens(
    reference: Session, candidate: Session, rows: list[list[int]], top_k: int | None = None
) -> list[dict[str, np.ndarray]]:
    """Per row of token ids: the token statistics (``quantlab.token_statistics``) of the candidate's next-token
    distributions against the reference's, over positions 1..n-1: exact from two full distributions, the top-k
    KL bound (with its tail mass) when the candidate is a server."""
    if candidate.full_distribution:  # row by row: a real vocabulary's logits for every row would not fit
        return [
            token_statistics(reference.logits(ids)[:-1], candidate.logits(ids)[:-1], torch.tensor(ids[1:]))
            for ids in rows
        ]
    if top_k is None:
        raise ValueError("a server's session is compared on its top-k: give top_k")
    served = served_answers(candidate, rows, top_k)
    return [
        topk_token_statistics(reference.logits(ids)[:-1], answer, torch.tensor(ids[1:]), top_k)
        for ids, answer in zip(rows, served)
    ]
