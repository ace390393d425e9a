"""bitsandbytes' 4-bit formats ``nf4`` and ``fp4``: a float32 absmax per block of the flattened tensor and a
16-entry code book, two codes per byte (first value in the high nibble).

Definitions follow bitsandbytes 0.50 (``get_4bit_type`` and its CPU ``quantize_4bit``): values are multiplied
by the reciprocal of the block's absmax, clamped to [-1, 1] and sent to the nearest code, a value exactly
between two codes going to the lower one.
"""

from __future__ import annotations

import torch

from quantlab.errors import UserError
from quantlab.formats.base import Format, Packed, register

# QLoRA's NormalFloat: quantiles of N(0, 1) with an exact zero, normalised to [-1, 1].
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
# bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bits, exponent bias 2) in bit-pattern order, over 12.
FP4_CODE = tuple(v / 12.0 for v in (0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3))


class _FourBit(Format):
    code_values: tuple

    def __init__(self, block_size: int = 64):
        if block_size < 2 or block_size & (block_size - 1):
            raise UserError(f"{self.name}: block_size must be a power of two >= 2, got {block_size}")
        self.block_size = block_size

    def describe(self) -> str:
        return f"{self.name}(block_size={self.block_size})"

    @property
    def bits_per_weight(self) -> float:
        return 4.0 + 32.0 / self.block_size

    def _code(self, device) -> torch.Tensor:
        return torch.tensor(self.code_values, dtype=torch.float32, device=device)

    def quantize(self, weight, importance=None) -> Packed:
        flat = self._check_finite(weight).reshape(-1).float()
        code = self._code(flat.device)
        order = torch.argsort(code)
        boundaries = (code[order[:-1]] + code[order[1:]]) / 2
        n, block = flat.numel(), self.block_size
        full = n - n % block
        blocks = flat[:full].reshape(-1, block)
        absmax = blocks.abs().amax(dim=1)
        scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1), -1, 1).reshape(-1)
        if full < n:  # bitsandbytes divides (not multiplies) in the partial last block, and stores it clamped
            tail_max = flat[full:].abs().amax().clamp(min=1e-38)
            absmax = torch.cat([absmax, tail_max.reshape(1)])
            scaled = torch.cat([scaled, torch.clamp(flat[full:] / tail_max, -1, 1)])
        scaled = torch.nn.functional.pad(scaled, (0, n % 2))
        index = order[torch.bucketize(scaled, boundaries)].to(torch.uint8)
        packed = (index[0::2] << 4) | index[1::2]
        return Packed(self.describe(), tuple(weight.shape), {"codes": packed, "absmax": absmax})

    def dequantize(self, packed: Packed) -> torch.Tensor:
        codes, absmax = packed.data["codes"], packed.data["absmax"]
        index = torch.stack([codes >> 4, codes & 0xF], dim=1).reshape(-1).long()
        n = 1
        for d in packed.shape:
            n *= d
        values = self._code(codes.device)[index][:n]
        values = torch.nn.functional.pad(values, (0, -n % self.block_size)).reshape(-1, self.block_size)
        return (values * absmax.unsqueeze(1)).reshape(-1)[:n].reshape(packed.shape)


@register("nf4")
class NF4(_FourBit):
    name, code_values = "nf4", NF4_CODE


@register("fp4")
class FP4(_FourBit):
    name, code_values = "fp4", FP4_CODE
