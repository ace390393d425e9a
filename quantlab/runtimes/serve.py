"""Serving a variant through a real engine: start its OpenAI-compatible server, wait until it answers, stop it.

``serve(reference, engine)`` is a context manager: on entry the engine (``quantlab.runtimes.engines``) is found,
told what to load (the variant's export at the engine's own precision path), started in a process group of its
own on a free or given port, and polled until ``GET /v1/models`` answers; on exit (the end of the ``with`` block,
Ctrl-C, an exception) the whole group gets SIGTERM, then SIGKILL after a grace period, so that no engine worker
outlives the command. The server's log goes to the store (``<variant>/serve/<engine>.log``); a server that dies
while starting is a one-line error quoting the log's last line.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantlab.chat import model_template, template_source
from quantlab.errors import UserError
from quantlab.runtimes.chat_front import Upstream, chat_front
from quantlab.runtimes.engines import get_engine
from quantlab.runtimes.openai_client import DEFAULT_TIMEOUT_S, OpenAIClient, RequestFailed
from quantlab.store import ArtifactStore, Subject, as_store

READY_TIMEOUT_S = 600.0  # vLLM's CPU build starts in 30-60 s on 2 cores; a real model on a GPU takes minutes
STOP_GRACE_S = 20.0


@dataclass(frozen=True)
class ServeOptions:
    """How the server is configured: what a provider chooses. ``dtype``: the activations' precision (``auto``: the
    checkpoint's, the engine's default); ``load``: which of the variant's files the engine loads (``auto``: the
    export at the engine's own precision path, ``hf``: the dequantized Hugging Face folder); ``max_logprobs``: how
    many log-probabilities per position the server may return (None: the whole vocabulary when it is at most
    1024 tokens, else 20, vLLM's default); ``reasoning_effort``: the effort the engine's own chat route renders
    every conversation with (llama.cpp's ``chat_template_kwargs``: its route reads none from a request)."""

    dtype: str = "auto"
    load: str = "auto"
    max_logprobs: int | None = None
    reasoning_effort: str | None = None

    def record(self) -> dict[str, Any]:
        effort = {} if self.reasoning_effort is None else {"reasoning_effort": self.reasoning_effort}
        return {"dtype": self.dtype, "load": self.load} | effort


@dataclass
class Server:
    """A running server: where to send requests, and what it serves."""

    engine: str
    subject: str
    base_url: str  # ends in /v1
    model: str  # the name requests carry
    loaded: str  # which export the engine loaded (hf, native, compressed-tensors, gguf)
    loaded_path: Path
    version: str
    log: Path
    process: subprocess.Popen
    startup_s: float
    options: ServeOptions
    request_defaults: dict = field(default_factory=dict)  # request fields that keep the engine faithful
    front: Any = None  # the chat front's settings (quantlab.runtimes.chat_front.FrontSettings) when one is in front
    engine_url: str = ""  # the engine's own base URL (base_url itself when no chat front is in front)

    def settings(self) -> dict[str, Any]:
        """What a result produced through this server records of it (not the port: it changes every start)."""
        front = {} if self.front is None else {"chat_front": self.front.record()}
        return (
            {"engine": self.engine, "engine_version": self.version, "loaded": self.loaded}
            | self.options.record()
            | front
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def died(self) -> str:
        """A one-line description of a dead server: its exit code and the last line of its log."""
        return f"exit code {self.process.poll()}; last log line: {last_log_line(self.log)!r}; log: {self.log}"

    @property
    def client(self) -> OpenAIClient:
        """The lab's OpenAI client of this server (through its chat front when one is in front)."""
        return OpenAIClient(self.base_url, self.model)

    def post(self, route: str, payload: dict, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
        """POST ``payload`` to ``<base_url>/<route>``; a dead server or an HTTP error is a one-line error."""
        try:
            return self.client.request(route, payload, timeout_s)
        except RequestFailed as failure:
            if failure.status is not None:
                raise UserError(f"{self.engine} server: {route} answered {failure.reason}") from None
            if not self.alive():
                raise UserError(f"{self.engine} server died during the request ({self.died()})") from None
            raise UserError(f"{self.engine} server at {self.base_url}: {failure}") from None


# The lines an engine ends a failed start with, which only point elsewhere in its log ("see root cause above").
_WRAPPERS = ("Engine core initialization failed", "WorkerProc initialization failed")


def last_log_line(log: Path) -> str:
    """The line of a log that says why it stopped: the last exception line that is not a wrapper pointing to an
    earlier one, else the last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    causes = []
    for line in lines:
        found = re.search(r"\b([A-Z]\w*(?:Error|Exception)): ", line)
        if found and not any(wrapper in line for wrapper in _WRAPPERS):
            causes.append(line[found.start() :])
    chosen = causes[-1] if causes else (lines[-1] if lines else "")
    return chosen[:300]


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def check_port(host: str, port: int) -> None:
    """A one-line error when ``port`` on ``host`` is taken (another server, or one left running)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(
                f"port {port} on {host} is taken ({error.strerror}); give another --port, or stop what listens there"
            ) from None


@contextlib.contextmanager
def serve(
    reference: str | Subject,
    engine: str,
    artifacts=None,
    host: str = "127.0.0.1",
    port: int | None = None,
    options: ServeOptions | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    front=None,
) -> Iterator[Server]:
    """A running server for the variant (or model source) ``reference`` (or a resolved ``Subject``), stopped
    when the block ends. ``front`` (``chat_front.FrontSettings``): a chat API the lab renders conversations for,
    listening on ``port`` in front of the engine (on a free port of its own), faithful or with a host's mistakes."""
    options = options or ServeOptions()
    store = as_store(artifacts)
    subject = reference if isinstance(reference, Subject) else store.subject(reference)
    chosen = get_engine(engine)
    launcher = chosen.launcher()  # one line when the engine is not installed
    load = chosen.what_to_load(store, subject, options)  # one line when it cannot take the variant's formats
    if port is None:
        port = free_port(host)
    else:
        check_port(host, port)
    front_port = None
    if front is not None:
        template_source(front.chat_template, model_template(subject.model_folder))  # one line before any start
        front_port, port = port, free_port(host)
    folder = ArtifactStore.serve_folder(subject)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{chosen.name}.log"
    command = launcher + chosen.arguments(load, subject, host, port, options)
    version = chosen.version()  # before the process exists: nothing between its start and the try can fail
    started = time.monotonic()
    with open(log, "w") as log_file:
        log_file.write("# " + " ".join(command) + "\n")
        log_file.flush()
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # unbuffered: the log shows what the server did up to the moment it stopped or died
            env=os.environ | {"PYTHONUNBUFFERED": "1"} | chosen.environment(options),
            start_new_session=True,  # its own process group: stopping it stops the engine's workers too
            preexec_fn=_stop_with_parent,
        )
    server = Server(
        engine=chosen.name,
        subject=subject.name,
        base_url=f"http://{host}:{port}/v1",
        model=subject.name,
        loaded=load.kind,
        loaded_path=load.path,
        version=version,
        log=log,
        process=process,
        startup_s=0.0,
        options=options,
        request_defaults=dict(chosen.speaks().request_defaults),
    )
    previous = _raise_on_sigterm()
    try:
        _wait_until_ready(server, ready_timeout_s)
        server.startup_s = time.monotonic() - started
        server.engine_url = server.base_url
        if front_port is None:
            yield server
        else:
            with _chat_front(server, subject, front, host, front_port) as url:
                server.base_url, server.front = url, front
                yield server
    finally:
        stop(process)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _chat_front(server: Server, subject: Subject, front, host: str, port: int):
    upstream = Upstream(OpenAIClient(server.base_url, server.model), server.request_defaults)
    return chat_front(upstream, model_template(subject.model_folder), front, server.model, host, port)


def _stop_with_parent() -> None:
    """In the server's process, before it starts: Linux sends it SIGTERM when quantlab dies, even by SIGKILL,
    so that no server outlives the command that started it."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _raise_on_sigterm():
    """SIGTERM to quantlab raises KeyboardInterrupt (Python's default ends the process without running the
    ``finally`` that stops the server); returns the handler it replaced, or None off the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    current = signal.getsignal(signal.SIGTERM)
    if current not in (signal.SIG_DFL, None):
        return None  # the caller handles SIGTERM itself (quantlab serve)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _wait_until_ready(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if not server.alive():
            raise UserError(f"{server.engine} server for {server.subject} did not start ({server.died()})")
        if server.client.ready():
            return
        if time.monotonic() > deadline:
            raise UserError(
                f"{server.engine} server for {server.subject} did not answer within {timeout_s:.0f} s; log: {server.log}"
            )
        time.sleep(0.5)


def stop(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """Stops a server's whole process group: SIGTERM, then SIGKILL after ``grace_s``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)
    # workers of the group that outlived their parent (vLLM's engine core) go too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
