"""GGUF / ggml block formats (``gguf:Q4_K`` etc.), stored as the exact ggml block bytes, one row per tensor row.

Quantization of k-quants, IQ4_NL, IQ4_XS and importance-weighted types (ggml switches to its search-based
quantizers there) is ggml's own ``ggml_quantize_chunk`` through llama-cpp-python's shared libraries: the
numerics users get from ``llama-quantize``. The legacy types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and MXFP4 also
have a torch implementation that follows ggml's reference row quantizers (``quantize_row_*_ref``) operation
for operation, byte for byte, down to what ggml's C casts do with a reciprocal that overflows; fused, it beats
one ggml thread 1.5-6x, so it takes large CPU tensors, CUDA tensors, and installs without the extra.

Dequantization is ggml's ``dequantize_row_*`` where installed (CPU), else torch for every type (``gguf_dequant``
holds the k-quant and IQ4 layouts); both are bit-identical to gguf-py's ``gguf.quants.dequantize``.

Rows must be a multiple of the type's block (32, or 256 for k-quants and IQ4_XS). ``fallback=True`` applies
llama.cpp's own substitution for a k-quant on such a row (``llama-quant.cpp``: Q2_K/Q3_K/IQ4_XS -> IQ4_NL,
Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0) and records it in ``Packed.fallback``.
"""

from __future__ import annotations

from typing import cast

import torch

from quantlab.errors import UserError
from quantlab.formats import ggml
from quantlab.formats.base import Format, Packed, register
from quantlab.formats.fused import FUSE_MIN_BYTES, fused
from quantlab.formats.fused import enabled as fusing_enabled
from quantlab.formats.gguf_dequant import DEQUANTIZERS

# (ggml type id, values per block, bytes per block), as ggml defines them (gguf-py's GGML_QUANT_SIZES).
GGUF_TYPES = {
    "Q8_0": (8, 32, 34),
    "Q4_0": (2, 32, 18),
    "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24),
    "Q2_K": (10, 256, 84),
    "Q3_K": (11, 256, 110),
    "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210),
    "IQ4_NL": (20, 32, 18),
    "IQ4_XS": (23, 256, 136),
    "MXFP4": (39, 32, 17),
}
# Types whose ggml quantizer reads an importance matrix (the others ignore it).
ACCEPTS_IMPORTANCE = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"}
LLAMA_CPP_FALLBACK = {
    "Q2_K": "IQ4_NL",
    "Q3_K": "IQ4_NL",
    "IQ4_XS": "IQ4_NL",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}
# E2M1 values doubled (ggml's kvalues_mxfp4), so that the scale is 2^(e-128).
MXFP4_KVALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: halves away from zero (torch.round rounds halves to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).view(torch.uint8).reshape(x.shape[0], 2)


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """ggml's nibble order: value j in the low nibble of byte j, value j+16 in its high nibble."""
    return (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)


def _high_bits(q: torch.Tensor) -> torch.Tensor:
    """Bit 4 of each of the 32 values, as a little-endian uint32 (4 bytes)."""
    bits = ((q >> 4) & 1).to(torch.int64) << torch.arange(32, device=q.device)
    word = bits.sum(dim=1)
    return torch.stack([(word >> (8 * i)) & 0xFF for i in range(4)], dim=1).to(torch.uint8)


def _signed_absmax(blocks: torch.Tensor) -> torch.Tensor:
    """The value of largest magnitude in each block, sign kept (the first one on ties, as ggml's loop).

    Fused code takes the max or the min, whichever is larger in magnitude (+0 for a zero block, as ggml):
    argmax + gather would split the fused pass in two. The two differ only where +m and -m are both in a
    block; ``quantize_legacy_fused`` recomputes exactly those blocks.
    """
    if torch.compiler.is_compiling():
        high, low = blocks.amax(dim=1, keepdim=True), blocks.amin(dim=1, keepdim=True)
        signed = torch.where(high >= -low, high, low)
        return torch.where(signed == 0, 0.0, signed)
    signed = blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True))
    return torch.where(signed == 0, 0.0, signed)  # ggml starts from +0 and keeps it for a block of ±0


@fused
def _quantize_legacy_fusable(blocks: torch.Tensor, qtype: str):
    high, low = blocks.amax(dim=1), blocks.amin(dim=1)
    return quantize_legacy(blocks, qtype), (high == -low) & (high != 0)


def quantize_legacy_fused(blocks: torch.Tensor, qtype: str) -> torch.Tensor:
    """``quantize_legacy`` in one fused pass for large inputs (10-20x gguf-py's numpy), the same bytes."""
    raw, magnitude_ties = _quantize_legacy_fusable(blocks, qtype)
    if qtype in ("Q4_0", "Q5_0") and magnitude_ties.any():  # see _signed_absmax
        rows = magnitude_ties.nonzero().flatten()
        raw[rows] = quantize_legacy(blocks[rows], qtype)
    return raw


def _reciprocal(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d != 0, 1.0 / d, torch.zeros_like(d))


def _codes(scaled: torch.Tensor, reciprocal: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Integer codes as ggml's C casts give them. A block whose scale is so small that its reciprocal
    overflows to inf has only ±inf and NaN to cast; on x86-64 every such cast gives 0 (the out-of-range
    integer 0x80000000, truncated to a byte)."""
    return torch.where(torch.isinf(reciprocal), 0, scaled).to(dtype)


def _quantize_symmetric(blocks, levels):  # Q4_0 (levels 16), Q5_0 (levels 32)
    d = _signed_absmax(blocks) / -(levels // 2)
    reciprocal = _reciprocal(d)
    q = _codes(
        torch.clamp(torch.trunc(blocks * reciprocal + (levels // 2 + 0.5)), max=levels - 1), reciprocal, torch.uint8
    )
    return d, q


def _quantize_min_max(blocks, levels):  # Q4_1, Q5_1
    low, high = blocks.amin(dim=1, keepdim=True), blocks.amax(dim=1, keepdim=True)
    d = (high - low) / (levels - 1)
    reciprocal = _reciprocal(d)
    q = _codes(torch.clamp(torch.trunc((blocks - low) * reciprocal + 0.5), max=levels - 1), reciprocal, torch.uint8)
    return d, low, q


def quantize_legacy(blocks: torch.Tensor, qtype: str) -> torch.Tensor:
    """ggml block bytes of float32 ``blocks`` (n, 32) for a legacy type or MXFP4, as quantize_row_*_ref."""
    if qtype == "Q8_0":
        d = blocks.abs().amax(dim=1, keepdim=True) / 127
        reciprocal = _reciprocal(d)
        q = _codes(_roundf(blocks * reciprocal), reciprocal, torch.int8).view(torch.uint8)
        return torch.cat([_fp16_bytes(d), q], dim=1)
    if qtype == "Q4_0":
        d, q = _quantize_symmetric(blocks, 16)
        return torch.cat([_fp16_bytes(d), _nibbles(q)], dim=1)
    if qtype == "Q5_0":
        d, q = _quantize_symmetric(blocks, 32)
        return torch.cat([_fp16_bytes(d), _high_bits(q), _nibbles(q)], dim=1)
    if qtype == "Q4_1":
        d, low, q = _quantize_min_max(blocks, 16)
        return torch.cat([_fp16_bytes(d), _fp16_bytes(low), _nibbles(q)], dim=1)
    if qtype == "Q5_1":
        d, low, q = _quantize_min_max(blocks, 32)
        return torch.cat([_fp16_bytes(d), _fp16_bytes(low), _high_bits(q), _nibbles(q)], dim=1)
    if qtype == "MXFP4":
        amax = blocks.abs().amax(dim=1, keepdim=True)
        exponent = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 2 + 127, torch.zeros_like(amax))
        exponent = exponent.to(torch.int32).to(torch.uint8)
        d = _e8m0_half(exponent)
        # ggml's best_index_mxfp4 takes the first nearest of its table (0, 1, 2, 3, 4, 6, 8, 12, then the
        # negatives): ties go to the smaller magnitude, and to +0 for a negative value that rounds to zero.
        # Near each midpoint the errors it compares are exact (Sterbenz), so counting the midpoints |x| is
        # strictly above gives the same index.
        magnitude = blocks.abs()
        q = torch.zeros_like(blocks, dtype=torch.int32)
        for midpoint in (0.5, 1.5, 2.5, 3.5, 5.0, 7.0, 10.0):
            q = q + (magnitude > midpoint * d).to(torch.int32)
        q = torch.where((blocks < 0) & (q > 0), q + 8, q)
        return torch.cat([exponent, _nibbles(q).to(torch.uint8)], dim=1)
    raise ValueError(qtype)


def _e8m0_half(exponent: torch.Tensor) -> torch.Tensor:
    """ggml's GGML_E8M0_TO_FP32_HALF: 2^(e - 128) as float32, exact for every e."""
    e = exponent.to(torch.int32)
    bits = torch.where(e < 2, torch.tensor(0x00200000, dtype=torch.int32) << e, (e - 1) << 23)
    return bits.view(torch.float32)


def _fp16_from(raw: torch.Tensor) -> torch.Tensor:
    return raw.contiguous().view(torch.float16).float()


def _unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    return torch.cat([qs & 0xF, qs >> 4], dim=1)


def _unpack_high_bits(qh: torch.Tensor) -> torch.Tensor:
    word = cast(torch.Tensor, sum(qh[:, i].to(torch.int64) << (8 * i) for i in range(4))).unsqueeze(1)
    return (((word >> torch.arange(32, device=qh.device)) & 1) << 4).to(torch.uint8)


def dequantize_legacy(raw: torch.Tensor, qtype: str) -> torch.Tensor:
    """Float32 values (n, 32) of ggml blocks ``raw`` (n, bytes) of a legacy type or MXFP4."""
    if qtype == "Q8_0":
        return _fp16_from(raw[:, :2]) * raw[:, 2:].contiguous().view(torch.int8).float()
    if qtype == "Q4_0":
        return _fp16_from(raw[:, :2]) * (_unpack_nibbles(raw[:, 2:]).float() - 8)
    if qtype == "Q4_1":
        return _fp16_from(raw[:, :2]) * _unpack_nibbles(raw[:, 4:]).float() + _fp16_from(raw[:, 2:4])
    if qtype == "Q5_0":
        q = _unpack_nibbles(raw[:, 6:]) | _unpack_high_bits(raw[:, 2:6])
        return _fp16_from(raw[:, :2]) * (q.float() - 16)
    if qtype == "Q5_1":
        q = _unpack_nibbles(raw[:, 8:]) | _unpack_high_bits(raw[:, 4:8])
        return _fp16_from(raw[:, :2]) * q.float() + _fp16_from(raw[:, 2:4])
    if qtype == "MXFP4":
        grid = torch.tensor(MXFP4_KVALUES, dtype=torch.float32, device=raw.device)
        return _e8m0_half(raw[:, :1]) * grid[_unpack_nibbles(raw[:, 1:]).long()]
    raise ValueError(qtype)


TORCH_QUANTIZED = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "MXFP4"}


def dequantize_blocks(raw: torch.Tensor, qtype: str) -> torch.Tensor:
    """Float32 values (blocks, block size) of ggml block bytes in torch: any device, no ggml needed."""
    blocks = raw.reshape(-1, GGUF_TYPES[qtype][2])
    return dequantize_legacy(blocks, qtype) if qtype in TORCH_QUANTIZED else DEQUANTIZERS[qtype](blocks)


class GGUFType(Format):
    """One ggml block type. ``fallback=True`` applies llama.cpp's substitution for rows it cannot take."""

    def __init__(self, qtype: str, fallback: bool = False):
        self.qtype = qtype
        self.type_id, self.block_size, self.block_bytes = GGUF_TYPES[qtype]
        self.row_multiple = self.block_size
        self.name = f"gguf:{qtype}"
        self.fallback = fallback

    def describe(self) -> str:
        return self.name + ("(fallback=llama.cpp)" if self.fallback else "")

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.block_bytes / self.block_size

    def substitute_for(self, shape: tuple[int, ...]) -> GGUFType | None:
        """llama.cpp's substitute type for rows this type cannot take, when ``fallback=True`` (else None)."""
        if shape[-1] % self.block_size and self.fallback and self.qtype in LLAMA_CPP_FALLBACK:
            return GGUFType(LLAMA_CPP_FALLBACK[self.qtype])
        return None

    def shape_problem(self, shape):
        substitute = self.substitute_for(shape)
        return substitute.shape_problem(shape) if substitute else super().shape_problem(shape)

    def quantize(self, weight, importance=None) -> Packed:
        self._check_finite(weight)
        row = weight.shape[-1]
        if row % self.block_size:
            substitute = self.substitute_for(weight.shape)
            if substitute is not None:
                packed = substitute.quantize(weight, importance)
                packed.fallback = (
                    f"{self.qtype} -> {substitute.qtype}: rows of {row} are not a multiple of {self.block_size}"
                )
                return packed
            self._check_row_multiple(weight, self.block_size)
        matrix = weight.reshape(-1, row).float().contiguous()
        if importance is not None:
            importance = importance.reshape(-1).float()
            if importance.numel() != row:
                raise UserError(f"{self.name}: importance has {importance.numel()} values; rows have {row}")

        use = importance if self.qtype in ACCEPTS_IMPORTANCE else None
        torch_can = self.qtype in TORCH_QUANTIZED and use is None
        large = matrix.nbytes >= FUSE_MIN_BYTES and fusing_enabled()
        if torch_can and (matrix.is_cuda or large or not ggml.available()):
            # Fused torch beats one ggml thread 1.3-9x on large tensors (docs/formats.md), same bytes.
            blocks = quantize_legacy_fused(matrix.reshape(-1, self.block_size), self.qtype)
        else:
            # The legacy types and MXFP4 are memory-bound in ggml (~1 Gw/s on one thread): splitting them over
            # threads measured slower (docs/formats.md), the search-based types scale with threads.
            blocks = ggml.quantize_rows(matrix, self.type_id, use, threads=1 if torch_can else None)
        data = blocks.reshape(matrix.shape[0], -1)
        return Packed(self.name, tuple(weight.shape), {"blocks": data}, notes={"ggml_type": self.qtype})

    def dequantize(self, packed: Packed) -> torch.Tensor:
        qtype = packed.notes.get("ggml_type", self.qtype)
        raw = packed.data["blocks"]
        _, block, size = GGUF_TYPES[qtype]

        if not raw.is_cuda and ggml.available():  # ggml's own dequantize_row_*, 2.5-8x the torch code below
            return ggml.dequantize_rows(raw.reshape(raw.shape[0], -1), qtype, packed.shape[-1]).reshape(packed.shape)
        return dequantize_blocks(raw, qtype).reshape(packed.shape)


for _qtype in GGUF_TYPES:
    register(f"gguf:{_qtype}")(lambda qtype=_qtype, **params: GGUFType(qtype, **params))
