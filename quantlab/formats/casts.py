"""Plain dtype casts: ``bf16`` and ``fp16`` (round to nearest even, as torch's ``.to`` does)."""

from __future__ import annotations

import torch

from quantlab.formats.base import Format, Packed, register


class _Cast(Format):
    dtype: torch.dtype

    def quantize(self, weight, importance=None) -> Packed:
        self._check_finite(weight)
        return Packed(self.name, tuple(weight.shape), {"values": weight.to(self.dtype)})

    def dequantize(self, packed: Packed) -> torch.Tensor:
        return packed.data["values"].float()

    @property
    def bits_per_weight(self) -> float:
        return float(torch.finfo(self.dtype).bits)


@register("bf16")
class BFloat16(_Cast):
    name, dtype = "bf16", torch.bfloat16


@register("fp16")
class Float16(_Cast):
    name, dtype = "fp16", torch.float16
