"""``lowrank``: a truncated SVD at a rank ratio, the two factors then stored in the group's format (``keep``:
as they are). How the lab emulates tensor-network compressors such as CompactifAI's."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from quantlab.methods.base import Method, Quantized


@dataclass(frozen=True)
class LowRankParams:
    rank_ratio: float  # the fraction of min(out, in) kept

    def __post_init__(self):
        ratio = self.rank_ratio
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio <= 1:
            raise ValueError(
                f"method lowrank needs rank_ratio in (0, 1], the fraction of min(out, in) kept; got {ratio!r}"
            )


def lowrank_rank(shape: tuple[int, int], rank_ratio: float) -> int:
    """r = ceil(rank_ratio · min(out, in)), at least 1; the product is rounded to 9 decimals first so that
    float noise (0.3 · 100 = 30.000000000000004) does not add a rank."""
    return max(1, math.ceil(round(rank_ratio * min(shape), 9)))


def lowrank(matrix: torch.Tensor, fmt, rank_ratio: float) -> Quantized:
    """W ≈ A·B with A = U·sqrt(S) (out x r), B = sqrt(S)·Vᵀ (r x in), r = ``lowrank_rank``.

    The SVD runs in float64 so that the factors do not depend on the BLAS's float32 summation order.
    """
    rank = lowrank_rank((matrix.shape[0], matrix.shape[1]), rank_ratio)
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    root = s[:rank].sqrt()
    # Fix each singular vector's sign (SVD's is arbitrary): the largest entry of each column of U positive.
    signs = torch.sign(u[:, :rank].gather(0, u[:, :rank].abs().argmax(dim=0, keepdim=True))).squeeze(0)
    signs[signs == 0] = 1
    a = (u[:, :rank] * root * signs).float()
    b = (root.unsqueeze(1) * vh[:rank] * signs.unsqueeze(1)).float()
    if fmt is None:
        return Quantized({"a": a, "b": b}, a @ b, {"rank": rank})
    packed_a, packed_b = fmt.quantize(a), fmt.quantize(b)
    a_hat, b_hat = fmt.dequantize(packed_a).float(), fmt.dequantize(packed_b).float()
    return Quantized({"a": packed_a, "b": packed_b}, a_hat @ b_hat, {"rank": rank})


class LowRank(Method, name="lowrank"):
    Params = LowRankParams
    changes_weights_alone = True
    stores_factors = True

    def stored_shapes(self, shape, params):
        rank = lowrank_rank(shape, params.rank_ratio)
        return [(shape[0], rank), (rank, shape[1])]  # the factors A (out x r) and B (r x in)

    def label(self, given):
        return f"low rank {100 * given['rank_ratio']:g}%"

    def apply(self, matrix, fmt, params, statistics=None, component=""):
        return lowrank(matrix, fmt, params.rank_ratio)
