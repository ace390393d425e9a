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
from quantlab.formats.fused import fused

# FP4 E2M1 magnitudes by code (sign is bit 3).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
E2M1_EMAX = 2  # largest exponent: 4 = 2^2
E4M3_MAX = 448.0
E4M3_EMAX = 8  # 256 = 2^8
SCALE_RULES = ("floor", "ceil", "even", "rceil")


# Magnitude thresholds of E2M1 round-to-nearest-even: code = how many thresholds |x| reaches. At a midpoint the
# tie goes to the even code: up where the code above is even (0.75 -> 1, 1.75 -> 2, 3.5 -> 4), down elsewhere,
# which the next float32 above the midpoint encodes.
_E2M1_THRESHOLDS = (
    float.fromhex("0x1.000002p-2"), 0.75, float.fromhex("0x1.400002p+0"), 1.75,
    float.fromhex("0x1.400002p+1"), 3.5, float.fromhex("0x1.400002p+2"),
)  # fmt: skip


def encode_e2m1(values: torch.Tensor) -> torch.Tensor:
    """FP4 E2M1 codes (uint8, 0..15) of float32 values: nearest, ties to even, saturating at ±6.

    Seven comparisons that one fused loop evaluates at memory speed; compiled code counts in int32, which
    vectorises where uint8 does not, eager code in uint8, which moves a quarter of the bytes.
    """
    count_dtype = torch.int32 if torch.compiler.is_compiling() else torch.uint8
    magnitude = values.abs()
    code = torch.signbit(values).to(count_dtype) * 8
    for threshold in _E2M1_THRESHOLDS:
        code = code + (magnitude >= threshold).to(count_dtype)
    return code.to(torch.uint8) if count_dtype != torch.uint8 else code


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """Float32 values of FP4 E2M1 codes, assembled from their bits (a table look-up does not vectorise)."""
    c = codes.to(torch.int32)
    exponent, mantissa = (c >> 1) & 3, c & 1
    # Normal codes (exponent field 1-3) are 2^(e-1)·(1 + m/2): float32 exponent e - 1 + 127, mantissa bit 22.
    normal = ((exponent + 126) << 23) | (mantissa << 22)
    bits = torch.where(exponent == 0, mantissa * 0x3F000000, normal)  # subnormal: 0 or 0.5 (0x3F000000)
    return (bits | ((c & 8) << 28)).view(torch.float32)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    pairs = codes.reshape(-1, 2).to(torch.int32)  # int32 arithmetic vectorises in fused code, uint8 does not
    return (pairs[:, 0] | (pairs[:, 1] << 4)).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(-1)


def _blocks(weight: torch.Tensor, block: int) -> torch.Tensor:
    return weight.float().reshape(-1, block)


def _float_exponent(x: torch.Tensor) -> torch.Tensor:
    """The unbiased exponent field of float32 values (-127 for zero and subnormals)."""
    return ((x.view(torch.int32) >> 23) & 0xFF) - 127


def mx_scale_exponent(amax: torch.Tensor, rule: str, element_mantissa_bits: int, element_emax: int, element_max: float):
    """The biased E8M0 exponent (uint8) of each block's shared scale under ``rule``."""
    if rule == "rceil":  # ceil(log2(amax / element_max)), read from the float's bits (exact, unlike log2)
        descale = (amax / element_max).view(torch.int32)
        exponent = ((descale >> 23) & 0xFF) - 127 + ((descale & 0x7FFFFF) > 0).to(torch.int32)
        # Subnormal descales: above 2^-127 round up to 2^-126, the rest clamp to 2^-127 (log2(0) = -inf too).
        subnormal = torch.where(descale > 0x400000, -126, -127)
        unbiased = torch.clamp(torch.where((descale >> 23) == 0, subnormal, exponent), min=-127, max=127)
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
    block_size = row_multiple = 32
    element_bits: int
    element_mantissa_bits: int
    element_emax: int
    element_max: float

    def _encode(self, scaled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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
        """The block's values in units of its scale, multiplied by the scale's reciprocal: a power of two, so
        the product is exactly the quotient, and a multiplication is what vectorised code does fast."""
        # 2^(127 - e) from its bits, exact for e in 1..253; a finite float32 amax gives at most 252 (floor
        # rules) or 253 (rceil), and e = 0 is handled below.
        e = exponent.to(torch.int32)
        if self.scale_rule == "rceil":  # as cuBLAS / torchao do for this rule: a zero exponent scales by 1
            reciprocal = torch.where(e == 0, 1.0, ((254 - e) << 23).view(torch.float32))
            return blocks * reciprocal  # no clamp: both element encoders saturate (a clamp here halved the speed)
        # The OCP rules divide by max(scale, 2^-126): exponent 0 (2^-127) scales like exponent 1.
        return blocks * ((254 - torch.clamp(e, min=1)) << 23).view(torch.float32)

    def quantize(self, weight, importance=None) -> Packed:
        self._check_finite(weight)
        self._check_row_multiple(weight, self.block_size)
        codes, exponent = _mx_quantize(_blocks(weight, self.block_size), self)
        return Packed(self.describe(), tuple(weight.shape), {"codes": codes, "scale_e8m0": exponent.reshape(-1)})

    def dequantize(self, packed: Packed) -> torch.Tensor:
        return _mx_dequantize(packed.data["codes"], packed.data["scale_e8m0"], self).reshape(packed.shape)


@fused
def _mx_quantize(blocks: torch.Tensor, fmt: _MX):
    amax = blocks.abs().amax(dim=1, keepdim=True)
    exponent = mx_scale_exponent(amax, fmt.scale_rule, fmt.element_mantissa_bits, fmt.element_emax, fmt.element_max)
    return fmt._encode(fmt._scaled(blocks, exponent)), exponent


@fused
def _mx_dequantize(codes: torch.Tensor, exponent: torch.Tensor, fmt: _MX):
    values = fmt._decode(codes).reshape(-1, fmt.block_size)
    return values * e8m0_to_float(exponent).unsqueeze(1)


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
    block_size = row_multiple = 16

    @property
    def bits_per_weight(self) -> float:
        return 4 + 8 / self.block_size  # plus one float32 per tensor

    def quantize(self, weight, importance=None) -> Packed:
        self._check_finite(weight)
        self._check_row_multiple(weight, self.block_size)
        blocks = _blocks(weight, self.block_size)
        # The tensor-wide amax is a separate reduction (inside the fused kernel it serialised the whole pass),
        # from max and min: reading only, where abs() would first write a copy of the weight.
        tensor_scale = torch.maximum(blocks.amax(), -blocks.amin()) / (E4M3_MAX * E2M1_MAX)
        codes, block_scale = _nvfp4_quantize(blocks, tensor_scale)
        stored = {"codes": codes, "scale_e4m3": block_scale, "tensor_scale": tensor_scale.reshape(1)}
        return Packed(self.describe(), tuple(weight.shape), stored)

    def dequantize(self, packed: Packed) -> torch.Tensor:
        data = packed.data
        return _nvfp4_dequantize(data["codes"], data["scale_e4m3"], data["tensor_scale"]).reshape(packed.shape)


@fused
def _nvfp4_quantize(blocks: torch.Tensor, tensor_scale: torch.Tensor):
    block_scale = blocks.abs().amax(dim=1, keepdim=True) / E2M1_MAX / tensor_scale
    tiny = torch.finfo(torch.float8_e4m3fn).tiny
    block_scale_e4m3 = torch.clamp(block_scale, min=tiny, max=E4M3_MAX).to(torch.float8_e4m3fn)
    reciprocal = (1.0 / tensor_scale) / block_scale_e4m3.float()
    return pack_nibbles(encode_e2m1(blocks * reciprocal)), block_scale_e4m3.reshape(-1)  # saturates at ±6


@fused
def _nvfp4_dequantize(codes: torch.Tensor, block_scale: torch.Tensor, tensor_scale: torch.Tensor):
    values = decode_e2m1(unpack_nibbles(codes)).reshape(-1, NVFP4.block_size)
    return values * (tensor_scale * block_scale.float().unsqueeze(1))
