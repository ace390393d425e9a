"""Integer round-to-nearest (``int2`` ... ``int8``), symmetric or asymmetric, per output row or per group.

The grid is GPTQ's (AutoGPTQ / GPTQModel ``Quantizer``), so that RTN here and GPTQ later differ only in how
codes are chosen: codes ``q`` in ``[0, 2^b - 1]``, values ``scale * (q - zero)``; the range always includes 0;
symmetric puts ``zero`` at ``2^(b-1)`` with ``scale = 2·absmax / (2^b - 1)``, asymmetric fits min and max.
Scales are stored in float16 (as GPTQ checkpoints store them) and codes are chosen with the stored scale, so
the packed object is exactly what a kernel reads. Codes are stored as one dense little-endian bit stream
(``bits`` bits per weight, no padding between rows), zero points as bytes.
"""

from __future__ import annotations

from typing import cast

import torch

from quantlab.errors import UserError
from quantlab.formats.base import Format, Packed, register
from quantlab.formats.fused import fused


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """A dense little-endian bit stream (uint8) of ``bits``-bit codes."""
    flat = codes.reshape(-1).to(torch.int32)  # int32 arithmetic: it vectorises in fused code, uint8 does not
    if 8 % bits == 0 and flat.numel() % (8 // bits) == 0:  # whole codes per byte: code i at bit i·bits
        per_byte = flat.reshape(-1, 8 // bits)
        return cast(torch.Tensor, sum(per_byte[:, i] << (i * bits) for i in range(8 // bits))).to(torch.uint8)
    stream = ((flat.unsqueeze(1) >> torch.arange(bits, device=flat.device, dtype=torch.int32)) & 1).reshape(-1)
    stream = torch.nn.functional.pad(stream, (0, -stream.numel() % 8)).reshape(-1, 8)
    return (stream << torch.arange(8, device=flat.device, dtype=torch.int32)).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` ``bits``-bit codes of a stream written by ``pack_bits``."""
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.int32)
        codes = (packed.to(torch.int32).unsqueeze(1) >> shifts) & (2**bits - 1)
        return codes.reshape(-1)[:count].to(torch.uint8)
    stream = ((packed.unsqueeze(1) >> torch.arange(8, device=packed.device, dtype=torch.uint8)) & 1).reshape(-1)
    stream = stream[: count * bits].reshape(count, bits)
    return (stream << torch.arange(bits, device=packed.device, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)


def _unpack_codes(stream: torch.Tensor, bits: int, groups_shape) -> torch.Tensor:
    """Codes (rows, groups, group size) of a stream holding one group per entry of ``groups_shape``."""
    groups = groups_shape[0] * groups_shape[1]
    per_group = stream.numel() * 8 // bits // groups  # the stream's last byte may hold padding bits
    return unpack_bits(stream, bits, groups * per_group).reshape(*groups_shape, per_group)


class IntegerRTN(Format):
    def __init__(self, bits: int, group_size: int | None = None, symmetric: bool = True):
        if not 2 <= bits <= 8:
            raise UserError(f"int{bits}: bits must be between 2 and 8")
        if group_size is not None and group_size < 1:
            raise UserError(f"int{bits}: group_size must be positive, got {group_size}")
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        self.row_multiple = group_size or 1
        self.name = f"int{bits}"
        self.max_code = 2**bits - 1

    def describe(self) -> str:
        group = "channel" if self.group_size is None else self.group_size
        return f"int{self.bits}(group_size={group}, symmetric={self.symmetric})"

    @property
    def bits_per_weight(self) -> float:
        if self.group_size is None:
            return float(self.bits)  # nominal: one scale per row is a vanishing overhead
        return self.bits + (16 + (0 if self.symmetric else 8)) / self.group_size  # fp16 scale, byte zero point

    def _groups(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.reshape(-1, weight.shape[-1]) if weight.dim() > 1 else weight.reshape(1, -1)
        if self.group_size is None:
            return matrix.unsqueeze(1)  # (rows, 1, cols)
        self._check_row_multiple(weight, self.group_size)
        return matrix.reshape(matrix.shape[0], -1, self.group_size)

    def quantize(self, weight, importance=None) -> Packed:
        codes, scale, zero = _rtn_quantize(self._groups(self._check_finite(weight).float()), self)
        stored = {"codes": codes, "scale": scale} | ({} if self.symmetric else {"zero": zero.to(torch.uint8)})
        return Packed(self.describe(), tuple(weight.shape), stored)

    def codes(self, packed: Packed) -> torch.Tensor:
        """The unpacked integer codes, shaped (rows, groups, group size)."""
        return _unpack_codes(packed.data["codes"], self.bits, packed.data["scale"].shape)

    def dequantize(self, packed: Packed) -> torch.Tensor:
        data = packed.data
        return _rtn_dequantize(data["codes"], data["scale"], data.get("zero"), self).reshape(packed.shape)


def scale_and_zero(groups: torch.Tensor, fmt: IntegerRTN):
    """GPTQ's grid for each group (last axis): float16 scale, that scale in float32, and the zero point."""
    low = groups.amin(-1).clamp(max=0)
    high = groups.amax(-1).clamp(min=0)
    if fmt.symmetric:
        high = torch.maximum(low.abs(), high)
        low = torch.where(low < 0, -high, low)
    empty = (low == 0) & (high == 0)
    low, high = torch.where(empty, -1.0, low), torch.where(empty, 1.0, high)
    scale = ((high - low) / fmt.max_code).to(torch.float16)
    scale32 = scale.float()
    if fmt.symmetric:
        zero = torch.full_like(scale32, (fmt.max_code + 1) // 2)
    else:
        zero = torch.round(-low / scale32)
    return scale, scale32, zero


def codes_on_grid(values: torch.Tensor, scale32: torch.Tensor, zero: torch.Tensor, max_code: int) -> torch.Tensor:
    """Round to nearest on the grid ``scale · (q - zero)``: the codes q (as floats)."""
    return torch.clamp(torch.round(values / scale32) + zero, 0, max_code)


@fused
def _rtn_quantize(groups: torch.Tensor, fmt: IntegerRTN):
    """Packed codes, float16 scales and zero points of ``groups`` (rows, groups, group size)."""
    scale, scale32, zero = scale_and_zero(groups, fmt)
    codes = codes_on_grid(groups, scale32.unsqueeze(-1), zero.unsqueeze(-1), fmt.max_code)
    return pack_bits(codes, fmt.bits), scale, zero


@fused
def _rtn_dequantize(stream: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, fmt: IntegerRTN):
    codes = _unpack_codes(stream, fmt.bits, scale.shape)
    if zero is None:
        zero = torch.full_like(scale, (fmt.max_code + 1) // 2, dtype=torch.float32)
    return scale.float().unsqueeze(-1) * (codes.float() - zero.float().unsqueeze(-1))


for _bits in range(2, 9):
    register(f"int{_bits}")(lambda bits=_bits, **params: IntegerRTN(bits, **params))
