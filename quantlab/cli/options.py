"""What several commands share: options taken alike, the engine options' help and the serving options they build."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from quantlab.chat import REASONING_EFFORTS
from quantlab.errors import UserError
from quantlab.runtimes.engines import LOADS
from quantlab.runtimes.serve import ServeOptions

# Options several commands take alike (typer reads the option from the annotation; the default stays per parameter).
Artifacts = Annotated[Path, typer.Option("--artifacts", help="The store: where variants and results live.")]
RayWorkers = Annotated[Optional[int], typer.Option("--workers", min=1, help="--ray: tasks at a time (local cluster).")]

# The evaluation settings eval, attribute and sweep take alike (each becomes a field of EvalSettings).
Limit = Annotated[
    Optional[int],
    typer.Option("--limit", min=1, help="Evaluate the first N items of each task (as lm-eval's --limit)."),
]
Repeats = Annotated[
    int,
    typer.Option(
        "--repeats", min=1, help="Runs per task with seeds seed, seed+1, ... (sampling only; greedy runs once)."
    ),
]
Temperature = Annotated[float, typer.Option("--temperature", min=0.0, help="0: greedy (the task's own settings).")]
TopP = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling's p (1: no cut).")]
ReasoningEffort = Annotated[
    Optional[str],
    typer.Option(
        "--reasoning-effort",
        help="low / medium / high: what every request asks for, passed to the chat template as gpt-oss's reads it "
        "(none: the template's default, medium for gpt-oss; attribute: the recipe's serve: reasoning_effort where "
        "it names one).",
    ),
]

ENGINE_HELP = "vllm (its OpenAI-compatible server, from .venv-vllm) or llama.cpp (llama-cpp-python's server, GGUF)."
LOAD_HELP = (
    "What the engine loads: auto (the export at its own precision path: native MXFP4, compressed-tensors, GGUF; "
    "the Hugging Face folder of an unquantized variant), hf (the dequantized Hugging Face folder), native, "
    "compressed-tensors, gguf."
)


def serve_options(dtype: str, load: str, max_logprobs: Optional[int], reasoning_effort: Optional[str] = None):
    if load not in LOADS:
        raise UserError(f"--load {load!r}: choose one of {', '.join(LOADS)}")
    if reasoning_effort is not None and reasoning_effort not in REASONING_EFFORTS:
        raise UserError(f"--reasoning-effort {reasoning_effort!r}: choose {', '.join(REASONING_EFFORTS)}")
    return ServeOptions(dtype=dtype, load=load, max_logprobs=max_logprobs, reasoning_effort=reasoning_effort)
