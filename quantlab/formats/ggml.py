"""ggml's own quantizer, ``ggml_quantize_chunk``, reached through the shared libraries llama-cpp-python ships.

Only the calling convention lives here; the numerics are ggml's. Installed with ``pip install 'quantlab[gguf]'``.
"""

from __future__ import annotations

import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from quantlab.errors import UserError

INSTALL_HINT = "install the GGUF extra: pip install 'quantlab[gguf]' (compiles llama-cpp-python, ~6 minutes)"


@functools.cache
def library() -> ctypes.CDLL:
    """The ggml shared library of the installed llama-cpp-python, with the signatures we call declared."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"GGUF k-quants and importance-weighted GGUF types need ggml: {INSTALL_HINT}") from None
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("libggml.*"))
    for path in candidates:
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        if hasattr(lib, "ggml_quantize_chunk"):
            break
    else:
        raise UserError(f"no ggml library with ggml_quantize_chunk under {lib_dir}; reinstall: {INSTALL_HINT}")
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]  # fmt: skip
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def available() -> bool:
    """Whether ggml's quantizer can be called here."""
    try:
        library()
    except UserError:
        return False
    return True


def _in_slices(rows: int, threads: int | None, run) -> None:
    """``run(start, count)`` over contiguous row slices on ``threads`` threads (default: torch's thread count).

    Rows are independent and ctypes releases the GIL for the duration of each ggml call.
    """
    threads = max(1, min(threads or torch.get_num_threads(), rows))
    bounds = [rows * i // threads for i in range(threads + 1)]
    slices = [(a, b - a) for a, b in zip(bounds, bounds[1:]) if b > a]
    if len(slices) == 1:
        run(*slices[0])
    else:
        with ThreadPoolExecutor(len(slices)) as pool:
            list(pool.map(lambda s: run(*s), slices))


def quantize_rows(
    matrix: torch.Tensor, type_id: int, importance: torch.Tensor | None = None, threads: int | None = None
) -> torch.Tensor:
    """ggml block bytes (rows, row_bytes) of a float32 ``matrix`` (rows, n_per_row), as uint8.

    Slices of rows go to ``threads`` threads (default: torch's thread count).
    """
    lib = library()
    src = matrix.detach().to("cpu", torch.float32).contiguous()
    rows, n_per_row = src.shape
    row_bytes = lib.ggml_row_size(type_id, n_per_row)
    dst = torch.empty((rows, row_bytes), dtype=torch.uint8)
    weights = None if importance is None else importance.detach().to("cpu", torch.float32).contiguous()
    lib.ggml_quantize_init(type_id)

    def run(start: int, count: int) -> None:
        written = lib.ggml_quantize_chunk(
            type_id, src[start].data_ptr(), dst[start].data_ptr(), 0, count, n_per_row,
            None if weights is None else weights.data_ptr(),
        )  # fmt: skip
        assert written == count * row_bytes, (written, count, row_bytes)

    _in_slices(rows, threads, run)
    return dst.to(matrix.device)


def _dequantizer(qtype: str):
    """ggml's ``dequantize_row_<type>(const void * blocks, float * out, int64_t count)`` for a GGUF type name."""
    name = "dequantize_row_" + (qtype[:-2].lower() + "_K" if qtype.endswith("_K") else qtype.lower())
    fn = getattr(library(), name)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return fn


def dequantize_rows(blocks: torch.Tensor, qtype: str, n_per_row: int, threads: int | None = None) -> torch.Tensor:
    """Float32 values (rows, n_per_row) of ggml block bytes ``blocks`` (rows, row_bytes), by ggml itself."""
    fn = _dequantizer(qtype)
    src = blocks.detach().to("cpu", torch.uint8).contiguous()
    rows = src.shape[0]
    dst = torch.empty((rows, n_per_row), dtype=torch.float32)
    _in_slices(rows, threads, lambda start, count: fn(src[start].data_ptr(), dst[start].data_ptr(), count * n_per_row))
    return dst.to(blocks.device)
