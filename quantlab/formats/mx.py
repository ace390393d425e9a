"""Microscaling formats: ``mxfp4`` and ``mxfp8`` (OCP MX v1.0) and ``nvfp4`` (NVIDIA).

* MX: blocks of 32 values along a row share one E8M0 scale (a power of two); elements are FP4 E2M1 (mxfp4)
  or FP8 E4M3 (mxfp8). The scale exponent follows a selectable rule, named as torchao names them: ``floor``
  (the OCP spec: floor(log2(amax)) minus the element format's largest exponent; can saturate the top of a
  block), ``ceil``, ``even`` (amax rounded to the element's mantissa width first) and ``rceil`` (NVIDIA's
  cuBLAS rule: round the descale amax/max_element up to a power of two). Defaults to ``floor``.
* NVFP4: blocks of 16 values share an E4M3 scale, on top of one float32 scale per tensor
  (tensor amax / (448·6)).

Elements round to nearest, ties to even, and saturate at the element format's largest value. Codes are stored
two per byte, the even-indexed value in the low nibble (torchao's and the OCP layout).
"""

from __future__ import annotations

import torch

from quantlab.errors import UserError
from quantlab.formats.base import Format, Packed, register

# FP4 E2M1 magnitudes by code (sign is bit 3).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
E2M1_EMAX = 2  # largest exponent: 4 = 2^2
E4M3_MAX = 448.0
E4M3_EMAX = 8  # 256 = 2^8
SCALE_RULES = ("floor", "ceil", "even", "rceil")
_F32_MIN_NORMAL = 2.0**-126


def encode_e2m1(values: torch.Tensor) -> torch.Tensor:
    """FP4 E2M1 codes (uint8, 0..15) of float32 values: nearest, ties to even, saturating at ±6.

    The grid is uniform within each binade (steps of 0.5 below 2, 1 below 4, 2 above) and the code's parity
    follows the grid index there, so torch.round (ties to even) on the value in grid steps is E2M1's own RNE.
    """
    magnitude = values.abs()
    half_steps = torch.round(magnitude * 2)  # codes 0..4 for |x| < 2 (value = code / 2)
    units = torch.round(magnitude)  # values 2..4 for 2 <= |x| < 4 (code = value + 2)
    doubles = torch.round(magnitude * 0.5).clamp(max=3)  # values 4, 6 for |x| >= 4, saturating (code = v/2 + 4)
    code = torch.where(magnitude < 2, half_steps, torch.where(magnitude < 4, units + 2, doubles + 4))
    return (code.to(torch.uint8) | (torch.signbit(values).to(torch.uint8) << 3)).to(torch.uint8)


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    grid = torch.tensor(E2M1_VALUES, device=codes.device)
    magnitude = grid[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -magnitude, magnitude)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    flat = codes.reshape(-1)
    return flat[0::2] | (flat[1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(-1)


def _blocks(weight: torch.Tensor, block: int) -> torch.Tensor:
    return weight.float().reshape(-1, block)


def _float_exponent(x: torch.Tensor) -> torch.Tensor:
    """The unbiased exponent field of float32 values (-127 for zero and subnormals)."""
    return ((x.view(torch.int32) >> 23) & 0xFF) - 127


def mx_scale_exponent(amax: torch.Tensor, rule: str, element_mantissa_bits: int, element_emax: int, element_max: float):
    """The biased E8M0 exponent (uint8) of each block's shared scale under ``rule``."""
    if rule == "rceil":
        descale = amax / element_max
        unbiased = torch.clamp(torch.ceil(torch.log2(descale)), min=-127, max=127)
        return (unbiased + 127).to(torch.uint8)
    if rule == "even":  # round amax to the element's mantissa width before taking its exponent
        bits = amax.view(torch.int32)
        bits = (bits + (1 << (23 - element_mantissa_bits - 1))) & (0x1FF << 23)
        amax = bits.view(torch.float32)
    exponent = _float_exponent(amax)
    if rule == "ceil":
        exponent = exponent + ((amax.view(torch.int32) & 0x7FFFFF) > 0).to(exponent.dtype)
    unbiased = torch.clamp(exponent - element_emax, min=-127, max=128)
    return (unbiased + 127).to(torch.uint8)


def e8m0_to_float(exponent: torch.Tensor) -> torch.Tensor:
    """2^(e - 127) in float32, built from its bits (e = 0 is the subnormal 2^-127; 255, E8M0's NaN, is NaN)."""
    e = exponent.to(torch.int32)
    bits = torch.where(e == 0, torch.tensor(0x00400000, dtype=torch.int32, device=e.device), e << 23)
    return torch.where(e == 255, torch.tensor(float("nan"), device=e.device), bits.view(torch.float32))


class _MX(Format):
    block_size = 32
    element_bits: int

    def __init__(self, scale_rule: str = "floor"):
        if scale_rule not in SCALE_RULES:
            raise UserError(f"{self.name}: scale_rule must be one of {SCALE_RULES}, got {scale_rule!r}")
        self.scale_rule = scale_rule

    def describe(self) -> str:
        return f"{self.name}(scale_rule={self.scale_rule})"

    @property
    def bits_per_weight(self) -> float:
        return self.element_bits + 8 / self.block_size

    def _scaled(self, blocks: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        if self.scale_rule == "rceil":  # multiply by the reciprocal, as cuBLAS / torchao do for this rule
            reciprocal = torch.where(exponent == 0, 1.0, torch.exp2(127 - exponent.float()))
            return torch.clamp(blocks * reciprocal, -self.element_max, self.element_max)
        scale = torch.clamp(e8m0_to_float(exponent), min=_F32_MIN_NORMAL)
        return blocks / scale

    def quantize(self, weight, importance=None) -> Packed:
        self._check_finite(weight)
        self._check_row_multiple(weight, self.block_size)
        blocks = _blocks(weight, self.block_size)
        amax = blocks.abs().amax(dim=1, keepdim=True)
        exponent = mx_scale_exponent(amax, self.scale_rule, self.element_mantissa_bits, self.element_emax, self.element_max)
        codes = self._encode(self._scaled(blocks, exponent))
        return Packed(self.describe(), tuple(weight.shape), {"codes": codes, "scale_e8m0": exponent.reshape(-1)})

    def dequantize(self, packed: Packed) -> torch.Tensor:
        values = self._decode(packed.data["codes"]).reshape(-1, self.block_size)
        scale = e8m0_to_float(packed.data["scale_e8m0"]).unsqueeze(1)
        return (values * scale).reshape(packed.shape)


@register("mxfp4")
class MXFP4(_MX):
    name, element_bits, element_mantissa_bits, element_emax, element_max = "mxfp4", 4, 1, E2M1_EMAX, E2M1_MAX

    def _encode(self, scaled):
        return pack_nibbles(encode_e2m1(scaled))

    def _decode(self, codes):
        return decode_e2m1(unpack_nibbles(codes))


@register("mxfp8")
class MXFP8(_MX):
    name, element_bits, element_mantissa_bits, element_emax, element_max = "mxfp8", 8, 3, E4M3_EMAX, E4M3_MAX

    def _encode(self, scaled):
        return torch.clamp(scaled, -E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).reshape(-1)

    def _decode(self, codes):
        return codes.float()


@register("nvfp4")
class NVFP4(Format):
    name = "nvfp4"
    block_size = 16

    @property
    def bits_per_weight(self) -> float:
        return 4 + 8 / self.block_size  # plus one float32 per tensor

    def quantize(self, weight, importance=None) -> Packed:
        self._check_finite(weight)
        self._check_row_multiple(weight, self.block_size)
        blocks = _blocks(weight, self.block_size)
        tensor_scale = blocks.abs().amax() / (E4M3_MAX * E2M1_MAX)
        block_scale = blocks.abs().amax(dim=1, keepdim=True) / E2M1_MAX / tensor_scale
        tiny = torch.finfo(torch.float8_e4m3fn).tiny
        block_scale_e4m3 = torch.clamp(block_scale, min=tiny, max=E4M3_MAX).to(torch.float8_e4m3fn)
        reciprocal = (1.0 / tensor_scale) / block_scale_e4m3.float()
        scaled = torch.clamp(blocks * reciprocal, -E2M1_MAX, E2M1_MAX)
        codes = pack_nibbles(encode_e2m1(scaled))
        return Packed(
            self.describe(),
            tuple(weight.shape),
            {"codes": codes, "scale_e4m3": block_scale_e4m3.reshape(-1), "tensor_scale": tensor_scale.reshape(1)},
        )

    def dequantize(self, packed: Packed) -> torch.Tensor:
        values = decode_e2m1(unpack_nibbles(packed.data["codes"])).reshape(-1, self.block_size)
        scale = packed.data["tensor_scale"] * packed.data["scale_e4m3"].float().unsqueeze(1)
        return (values * scale).reshape(packed.shape)
