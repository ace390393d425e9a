"""llama.cpp (llama-cpp-python) as a runtime: the one place it is started, for every stage that runs a GGUF.

``open_gguf`` loads a file (llama.cpp's logging silenced, one clear line if the ``gguf`` extra is missing);
``logits`` runs token ids through it. ``quantlab.runtimes.llama_cpp_lm`` answers lm-eval's requests with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quantlab.errors import UserError
from quantlab.formats import ggml

_QUIET: list[Any] = []  # keeps the ctypes log callback alive for as long as llama.cpp may call it
_ERRORS: list[str] = []  # llama.cpp's latest error lines, for the one-line message when a load fails
_GGML_LOG_LEVEL_ERROR = 4


def llama_cpp_module():
    """The ``llama_cpp`` module, its logging silenced (llama.cpp logs every load to stderr, even with
    verbose=False; quantlab reports what matters itself); a one-line error when the gguf extra is missing."""

    ggml.library()
    import llama_cpp

    if not _QUIET:

        @llama_cpp.llama_log_callback
        def quiet(level, text, user_data):
            if level == _GGML_LOG_LEVEL_ERROR and text:
                _ERRORS[:] = [*_ERRORS[-3:], text.decode(errors="replace").strip()]

        _QUIET.append(quiet)
        llama_cpp.llama_log_set(quiet, None)
    return llama_cpp


def open_gguf(path: Path, n_ctx: int, seed: int = 0, n_threads: int | None = None):
    """A ``llama_cpp.Llama`` on ``path`` keeping the logits of every position (close it when done); a file
    llama.cpp refuses is a one-line ``UserError`` with llama.cpp's own reason."""

    llama_cpp = llama_cpp_module()
    threads = {} if n_threads is None else {"n_threads": n_threads}
    _ERRORS.clear()
    try:
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=seed, **threads)
    except ValueError:
        reason = next((line for line in _ERRORS if "check_tensor" in line or "error" in line), None)
        raise UserError(
            f"{path}: llama.cpp does not load this GGUF ({reason or 'no reason logged'}); "
            "re-export it or check that this llama.cpp knows its architecture"
        ) from None


def logits(llm, ids: list[int]) -> np.ndarray:
    """llama.cpp's float32 logits (positions, vocabulary) for ``ids``, from a fresh context: a copy, since
    ``llm.scores`` is the context's own buffer, which the next ``eval`` overwrites."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def generate(
    llm, prompt: str, limit: int, stops: list[int], temperature: float = 0.0, top_p: float = 1.0, seed: int = 0
) -> tuple[str, int, bool]:
    """``prompt`` continued by llama.cpp's own sampler (greedy at temperature 0, else seeded, with no top-k or
    min-p cut, as transformers samples), until a token of ``stops`` or ``limit`` tokens: (the text, special
    tokens kept, without the stop token; the tokens it took; whether it stopped at a stop token)."""
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    llm.set_seed(seed)
    kept: list[int] = []
    stopped = False
    if limit > 0:
        sampler = llm.generate(ids, top_k=0, top_p=top_p, min_p=0.0, temp=temperature, repeat_penalty=1.0, reset=True)
        for token in sampler:
            if token in stops:
                stopped = True
                break
            kept.append(token)
            if len(kept) >= limit:
                break
    text = llm.detokenize(kept, special=True).decode("utf-8", errors="replace")
    return text, len(kept), stopped


def version() -> str:
    return f"llama-cpp-python {llama_cpp_module().__version__}"
