"""``quantlab serve`` and ``quantlab audit``: variants in an engine, and any endpoint checked from outside."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from quantlab.cli import render
from quantlab.cli.options import ENGINE_HELP, LOAD_HELP, Artifacts, serve_options
from quantlab.cli.render import console
from quantlab.errors import UserError
from quantlab.runtimes.chat_front import FrontSettings
from quantlab.runtimes.serve import serve
from quantlab.stages.audit import audit


def serve_command(
    subject: str = typer.Argument(..., help="A built variant (folder or name under --artifacts) or a model source."),
    engine: str = typer.Option(..., "--engine", help=ENGINE_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="The address to listen on (127.0.0.1: this machine only)."),
    port: Optional[int] = typer.Option(
        None, "--port", min=1, max=65535, help="The port (default: a free one, printed)."
    ),
    dtype: str = typer.Option("auto", "--dtype", help="vllm: activations' dtype (auto: the checkpoint's; float32)."),
    load: str = typer.Option("auto", "--load", help=LOAD_HELP),
    max_logprobs: Optional[int] = typer.Option(
        None,
        "--max-logprobs",
        min=1,
        help="Log-probabilities per position the server may return (default: the "
        "whole vocabulary up to 1024 tokens, else 20).",
    ),
    chat_front: bool = typer.Option(
        False,
        "--chat-front",
        help="Put the lab's chat API in front of the engine: it renders conversations with the model's template "
        "and passes reasoning_effort (what vLLM's harmony path and llama.cpp cannot do for a small harmony-shaped "
        "vocabulary). Implied by the host-mistake options below.",
    ),
    chat_template: Optional[str] = typer.Option(
        None,
        "--chat-template",
        help="Host mistake: render conversations with this template instead of the model's: chatml, final-only, "
        "plain, or a Jinja file.",
    ),
    drop_effort: bool = typer.Option(
        False, "--drop-effort", help="Host mistake: ignore the requested reasoning_effort (the stale engine)."
    ),
    drop_sampling: bool = typer.Option(
        False, "--drop-sampling", help="Host mistake: ignore the requested temperature and top_p."
    ),
    reasoning_field: str = typer.Option(
        "reasoning_content",
        "--reasoning-field",
        help="Where the chat API returns the analysis: reasoning_content or reasoning.",
    ),
    reasoning_effort: Optional[str] = typer.Option(
        None,
        "--reasoning-effort",
        help="llama.cpp without --chat-front: the effort its own chat route renders every conversation with "
        "(llama.cpp's chat_template_kwargs; that route reads none from a request).",
    ),
    artifacts: Artifacts = Path("artifacts"),
) -> None:
    """Serve a variant through a real engine's OpenAI-compatible server until Ctrl-C (or SIGTERM)."""
    options = serve_options(dtype, load, max_logprobs, reasoning_effort)
    front: FrontSettings | None = FrontSettings(
        chat_template=chat_template or "model",
        effort_honored=not drop_effort,
        sampling_honored=not drop_sampling,
        reasoning_field=reasoning_field,
    )
    if not chat_front and front == FrontSettings():
        front = None
    if front is not None and reasoning_effort is not None:
        raise UserError("--reasoning-effort sets the engine's own chat route; the chat front passes each request's")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with render.status(f"starting {engine} for {subject}", False):
        context = serve(subject, engine, artifacts, host, port, options, front=front)
        server = context.__enter__()
    try:
        console.print(
            f"{server.engine} ({server.version}) serves {server.subject} ({server.loaded}: {server.loaded_path}) at "
            f"{server.base_url} as model {server.model!r}; started in {server.startup_s:.1f} s; log: {server.log}",
            highlight=False,
        )
        if server.front is not None:
            console.print(
                f"chat front: {server.front.describe()}; the engine itself: {server.engine_url}", highlight=False
            )
        console.print("Ctrl-C stops it.", highlight=False)
        while not stopped.is_set() and server.alive():
            stopped.wait(0.5)
        if not server.alive():
            raise UserError(f"{server.engine} server stopped by itself ({server.died()})")
    except KeyboardInterrupt:
        pass
    finally:
        context.__exit__(None, None, None)
    console.print(f"{server.engine} server stopped", highlight=False)


def audit_command(
    url: str = typer.Argument(
        ..., help="The endpoint's base URL, e.g. http://127.0.0.1:8000/v1 (nothing else is sent anything)."
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="The reference it claims to serve: a variant or model source (default: the default model).",
    ),
    candidates: Optional[list[str]] = typer.Option(
        None,
        "--candidates",
        help="Variants the weights check compares (repeatable; default: every variant in the store).",
    ),
    budget: Optional[int] = typer.Option(
        None, "--budget", help="Total queries, shared among the checks (default: their defaults, 188)."
    ),
    api: str = typer.Option(
        "chat", "--api", help="chat (the chat route: effort, template) or completions (prompts rendered here)."
    ),
    checks: Optional[list[str]] = typer.Option(
        None,
        "--check",
        help="Run only this check (repeatable): weights, effort, template, sampling, accuracy, tools, shape.",
    ),
    seed: int = typer.Option(0, "--seed", help="Which questions are asked (and the permutations' seed)."),
    repeats: int = typer.Option(
        1,
        "--repeats",
        help="Runs per accuracy question: 1 greedy; more at temperature 1, with pass@k (the provider study ran 32).",
    ),
    served_model: Optional[str] = typer.Option(
        None, "--served-model", help="The model name requests carry (default: the first one /v1/models lists)."
    ),
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="Declare this endpoint faithful: its next-token noise joins the weights check's calibration (against "
        "the trusted endpoint, with --reference-url).",
    ),
    reference_url: Optional[str] = typer.Option(
        None,
        "--reference-url",
        help="A trusted endpoint (your own vLLM, the vendor's API): every check compares the audited endpoint with "
        "it, and the reference's weights are never loaded (--model still names the model: its template, tokenizer "
        "and questions).",
    ),
    reference_api: str = typer.Option(
        "chat", "--reference-api", help="The route the trusted endpoint's turns are asked through: chat or completions."
    ),
    reference_served_model: Optional[str] = typer.Option(
        None, "--reference-served-model", help="The model name requests to the trusted endpoint carry."
    ),
    timeout_s: float = typer.Option(120.0, "--timeout", help="Seconds to wait for one answer."),
    per_check_level: bool = typer.Option(
        False,
        "--per-check-level",
        help="Run every check at the level 0.05 (more power; a faithful endpoint then fails some check more often). "
        "Default: 0.05 is the whole audit's level, shared among its tests.",
    ),
    artifacts: Artifacts = Path("artifacts"),
    as_json: bool = typer.Option(False, "--json", help="Print the audit record as JSON."),
) -> None:
    """Audit an OpenAI-compatible endpoint: weights, reasoning effort, prompt format, sampling, accuracy and
    response shape, each a statistical test with its verdict and the queries it spent."""
    with render.status("auditing", as_json) as status:
        record = audit(
            url,
            model,
            candidates,
            budget,
            api,
            seed,
            checks=checks,
            artifacts=artifacts,
            served_model=served_model,
            calibrate=calibrate,
            timeout_s=timeout_s,
            repeats=repeats,
            reference_url=reference_url,
            reference_api=reference_api,
            reference_served_model=reference_served_model,
            per_check_level=per_check_level,
            on_check=lambda name, queries: status.update(f"audit: {name} ({queries} queries)") if status else None,
        )
    if as_json:
        print(record.model_dump_json(indent=1))
        return
    render.audit(record)
    console.print(f"written: {record.stored_at}", highlight=False)
