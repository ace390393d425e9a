"""``rtn``: round to nearest, the format's own quantizer."""

from __future__ import annotations

import torch

from quantlab.methods.base import Method, Quantized


def rtn(matrix: torch.Tensor, fmt) -> Quantized:
    packed = fmt.quantize(matrix)
    return Quantized({"": packed}, fmt.dequantize(packed).float())


class RoundToNearest(Method, name="rtn"):
    plain_rounding = True

    def apply(self, matrix, fmt, params, statistics=None, component=""):
        return rtn(matrix, fmt)
