"""What several commands share: the engine options' help and the serving options they build."""

from __future__ import annotations

from typing import Optional

from quantlab.errors import UserError

ENGINE_HELP = "vllm (its OpenAI-compatible server, from .venv-vllm) or llama.cpp (llama-cpp-python's server, GGUF)."
LOAD_HELP = (
    "What the engine loads: auto (the export at its own precision path: native MXFP4, compressed-tensors, GGUF; "
    "the Hugging Face folder of an unquantized variant), hf (the dequantized Hugging Face folder), native, "
    "compressed-tensors, gguf."
)


def serve_options(dtype: str, load: str, max_logprobs: Optional[int]):
    # on use: `quantlab --help` starts without torch, transformers and lm-eval
    from quantlab.runtimes.engines import LOADS
    from quantlab.runtimes.serve import ServeOptions

    if load not in LOADS:
        raise UserError(f"--load {load!r}: choose one of {', '.join(LOADS)}")
    return ServeOptions(dtype=dtype, load=load, max_logprobs=max_logprobs)
