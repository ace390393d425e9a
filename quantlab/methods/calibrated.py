"""The data-driven methods: ``gptq`` (integer formats) and ``imatrix`` (ggml's importance-weighted quantizers),
both fed the routed inputs of each matrix from the calibration tokens. A matrix that saw fewer than
``min_tokens`` of them (an expert the router almost never chose, an embedding) falls back to rtn, recorded."""

from __future__ import annotations

import re
from dataclasses import dataclass

from quantlab.formats.gguf import ACCEPTS_IMPORTANCE
from quantlab.methods.base import Method, Quantized
from quantlab.methods.gptq import gptq_quantize
from quantlab.methods.rtn import rtn


class CalibratedMethod(Method):
    needs_calibration = True

    def apply(self, matrix, fmt, params, statistics=None, component=""):
        tokens = 0 if statistics is None else statistics.tokens
        if tokens < params.min_tokens:
            result = rtn(matrix, fmt)
            seen = (
                "an embedding has no input activations"
                if component == "embeddings"
                else f"saw {tokens} calibration tokens"
            )
            result.notes["method_fallback"] = f"rtn: {seen} (min_tokens {params.min_tokens})"
            result.notes["calibration_tokens"] = tokens
            return result
        packed = self.quantize(matrix, fmt, params, statistics)
        return Quantized({"": packed}, fmt.dequantize(packed).float(), {"calibration_tokens": tokens})

    def quantize(self, matrix, fmt, params, statistics):
        raise NotImplementedError


@dataclass(frozen=True)
class GPTQParams:
    damp: float = 0.01  # added to the Hessian's diagonal, as a fraction of its mean
    block_size: int = 128  # columns updated together (lazy batch updates)
    min_tokens: int = 32

    def __post_init__(self):
        if not (isinstance(self.damp, (int, float)) and 0 < self.damp < 1):
            raise ValueError(f"method gptq: damp must be in (0, 1), got {self.damp!r}")


class GPTQ(CalibratedMethod, name="gptq"):
    Params = GPTQParams

    def format_problem(self, format_name):
        if not re.fullmatch(r"int[2-8]", format_name):
            return f"method gptq works with the integer formats int2 ... int8, not {format_name!r}; use rtn for {format_name!r}"
        return None

    def quantize(self, matrix, fmt, params, statistics):
        return gptq_quantize(
            matrix, statistics.gram, statistics.tokens, fmt, damp=params.damp, block_size=params.block_size
        )


@dataclass(frozen=True)
class ImatrixParams:
    min_tokens: int = 32


class Imatrix(CalibratedMethod, name="imatrix"):
    Params = ImatrixParams

    def format_problem(self, format_name):
        if not (format_name.startswith("gguf:") and format_name[5:] in ACCEPTS_IMPORTANCE):
            return (
                f"method imatrix works with the GGUF types whose ggml quantizer reads importance "
                f"({', '.join('gguf:' + t for t in sorted(ACCEPTS_IMPORTANCE))}), not {format_name!r}"
            )
        return None

    def quantize(self, matrix, fmt, params, statistics):
        return fmt.quantize(matrix, importance=statistics.importance)  # the matrix's mean squared inputs
