"""The exports: file formats engines load (a GGUF file for llama.cpp, gpt-oss's native MXFP4 checkpoint, the
compressed-tensors checkpoint vLLM loads), one module each, registered by name (``Export``)."""

from collections.abc import Sequence

# isort: off
# Registered in this order, which is the order a build writes them and its manifest lists them.
from quantlab.export import gguf  # noqa: F401
from quantlab.export import native  # noqa: F401
from quantlab.export import compressed_tensors  # noqa: F401

# isort: on
from quantlab.export.base import Export, get_export

__all__ = ["Export", "get_export", "in_build_order", "llama_cpp_export", "llama_cpp_exports"]


def in_build_order(names: Sequence[str]) -> list[str]:
    """A recipe's exports in the order a build writes them; a one-line error naming the known ones otherwise."""
    for name in names:
        get_export(name)
    return [name for name in Export.names() if name in names]


def llama_cpp_exports(names: Sequence[str]) -> list[str]:
    """Which of ``names`` llama.cpp runs (the GGUF file): what attribution's runtime factor needs."""
    return [name for name in in_build_order(names) if get_export(name).runs_in_llama_cpp]


def llama_cpp_export() -> str:
    """The export llama.cpp runs, by name (what a recipe lists to get it)."""
    return llama_cpp_exports(Export.names())[0]
