"""FP8 (``fp8_e4m3``, ``fp8_e5m2``) with a float32 scale per tensor, per output row, or per 128x128 block.

The scale maps each group's absolute maximum onto the format's largest finite value; the cast itself is
torch's float8 cast (round to nearest even), applied after clamping so that no value can overflow to NaN.
The 128x128 blocks are DeepSeek-V3's weight layout; edge blocks of a shape that is not a multiple of 128 are
simply smaller.
"""

from __future__ import annotations

import torch

from quantlab.errors import UserError
from quantlab.formats.base import Format, Packed, register
from quantlab.formats.fused import fused

GRANULARITIES = ("tensor", "channel", "block")
BLOCK = 128


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(1, -1) if weight.dim() == 1 else weight.reshape(-1, weight.shape[-1])


class _Float8(Format):
    dtype: torch.dtype

    def __init__(self, granularity: str = "channel"):
        if granularity not in GRANULARITIES:
            raise UserError(f"{self.name}: granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.granularity = granularity
        self.max_value = torch.finfo(self.dtype).max

    def describe(self) -> str:
        return f"{self.name}(granularity={self.granularity})"

    @property
    def bits_per_weight(self) -> float:
        # Nominal: a per-channel or per-tensor float32 scale is a vanishing overhead on real matrices.
        return 8.0 + (32.0 / BLOCK**2 if self.granularity == "block" else 0.0)

    def _amax(self, matrix: torch.Tensor) -> torch.Tensor:
        if self.granularity == "tensor":
            return matrix.abs().amax().reshape(1, 1)
        if self.granularity == "channel":
            return matrix.abs().amax(dim=1, keepdim=True)
        rows, cols = matrix.shape
        padded = torch.nn.functional.pad(matrix.abs(), (0, -cols % BLOCK, 0, -rows % BLOCK))
        r, c = padded.shape[0] // BLOCK, padded.shape[1] // BLOCK
        return padded.reshape(r, BLOCK, c, BLOCK).amax(dim=(1, 3))

    def _expand(self, scale: torch.Tensor, shape) -> torch.Tensor:
        if self.granularity != "block":
            return scale
        rows, cols = shape
        return scale.repeat_interleave(BLOCK, 0)[:rows].repeat_interleave(BLOCK, 1)[:, :cols]

    def quantize(self, weight, importance=None) -> Packed:
        codes, scale = _fp8_quantize(_as_matrix(self._check_finite(weight).float()), self)
        return Packed(self.describe(), tuple(weight.shape), {"codes": codes, "scale": scale})

    def dequantize(self, packed: Packed) -> torch.Tensor:
        return _fp8_dequantize(packed.data["codes"], packed.data["scale"], self).reshape(packed.shape)


@fused
def _fp8_quantize(matrix: torch.Tensor, fmt: _Float8):
    amax = fmt._amax(matrix)
    scale = torch.where(amax > 0, amax / fmt.max_value, torch.ones_like(amax))
    scaled = (matrix / fmt._expand(scale, matrix.shape)).clamp(-fmt.max_value, fmt.max_value)
    return scaled.to(fmt.dtype), scale


@fused
def _fp8_dequantize(codes: torch.Tensor, scale: torch.Tensor, fmt: _Float8):
    return codes.float() * fmt._expand(scale, codes.shape)


@register("fp8_e4m3")
class Float8E4M3(_Float8):
    name, dtype = "fp8_e4m3", torch.float8_e4m3fn


@register("fp8_e5m2")
class Float8E5M2(_Float8):
    name, dtype = "fp8_e5m2", torch.float8_e5m2
