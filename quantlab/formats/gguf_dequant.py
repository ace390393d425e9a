"""Torch dequantization of ggml's k-quant and IQ4 blocks (the block layouts of ggml-common.h).

Each function takes raw blocks (n, bytes) as uint8 and returns float32 values (n, 256) or (n, 32), computing
in the same order as ggml's ``dequantize_row_*`` (and gguf-py), so results are bit-identical to both.
"""

from __future__ import annotations

import torch

QK_K = 256
IQ4_NL_KVALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _f16(raw: torch.Tensor) -> torch.Tensor:
    return raw.contiguous().view(torch.float16).float()


def _bits(x: torch.Tensor, shifts, mask: int) -> torch.Tensor:
    """``(x >> s) & mask`` for each shift, stacked on a new axis just before the last."""
    s = torch.tensor(shifts, dtype=x.dtype, device=x.device).reshape(-1, 1)
    return (x.unsqueeze(-2) >> s) & mask


def dequantize_q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, qs, d, dmin = b[:, :16], b[:, 16:80], _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0xF).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = _bits(qs.reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def dequantize_q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, scales, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    low = _bits(scales[:, :8], (0, 4), 0xF).reshape(n, 16)
    high = _bits(scales[:, 8:], (0, 2, 4, 6), 3).reshape(n, 16)
    sc = ((low | (high << 4)).to(torch.int8) - 32).float()
    dl = (d * sc).reshape(n, 16, 1)
    ql = _bits(qs.reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16)
    qh = _bits(hmask.reshape(n, 1, 32), tuple(range(8)), 1).reshape(n, 16, 16) ^ 1
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).float()
    return (dl * q).reshape(n, QK_K)


def _scale_min_k4(scales: torch.Tensor):
    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0xF) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc.float(), mn.float()


def dequantize_q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    q = _bits(b[:, 16:].reshape(n, 4, 32), (0, 4), 0xF).reshape(n, 8, 32).float()
    return ((d * sc).reshape(n, 8, 1) * q - (dmin * mn).reshape(n, 8, 1)).reshape(n, QK_K)


def dequantize_q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    qh, qs = b[:, 16:48], b[:, 48:]
    ql = _bits(qs.reshape(n, 4, 32), (0, 4), 0xF).reshape(n, 8, 32)
    high = _bits(qh.reshape(n, 1, 32), tuple(range(8)), 1).reshape(n, 8, 32)
    q = (ql | (high << 4)).float()
    return ((d * sc).reshape(n, 8, 1) * q - (dmin * mn).reshape(n, 8, 1)).reshape(n, QK_K)


def dequantize_q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh, scales, d = b[:, :128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
    dl = (d * scales.contiguous().view(torch.int8).float()).reshape(n, 16, 1)
    low = _bits(ql.reshape(n, 2, 64), (0, 4), 0xF).reshape(n, 8, 32)
    high = _bits(qh.reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()
    return (dl * q).reshape(n, QK_K)


def dequantize_iq4_nl(b: torch.Tensor) -> torch.Tensor:
    grid = torch.tensor(IQ4_NL_KVALUES, dtype=torch.float32, device=b.device)
    codes = torch.cat([b[:, 2:] & 0xF, b[:, 2:] >> 4], dim=1)
    return _f16(b[:, :2]) * grid[codes.long()]


def dequantize_iq4_xs(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d = _f16(b[:, :2])
    scales_h = b[:, 2:4].contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    scales_l = _bits(b[:, 4:8], (0, 4), 0xF).transpose(1, 2).reshape(n, 8)
    high = ((scales_h >> torch.arange(0, 16, 2, device=b.device)) & 3).to(torch.uint8)
    sc = ((scales_l | (high << 4)).to(torch.int8) - 32).float()
    dl = (d * sc).reshape(n, 8, 1)
    codes = _bits(b[:, 8:].reshape(n, 8, 16), (0, 4), 0xF).reshape(n, 8, 32)
    grid = torch.tensor(IQ4_NL_KVALUES, dtype=torch.float32, device=b.device)
    return (dl * grid[codes.long()]).reshape(n, QK_K)


DEQUANTIZERS = {
    "Q2_K": dequantize_q2_k,
    "Q3_K": dequantize_q3_k,
    "Q4_K": dequantize_q4_k,
    "Q5_K": dequantize_q5_k,
    "Q6_K": dequantize_q6_k,
    "IQ4_NL": dequantize_iq4_nl,
    "IQ4_XS": dequantize_iq4_xs,
}
