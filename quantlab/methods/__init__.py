"""Methods: how a group's format picks its values from a weight (and, for data-driven methods, from activations).

* ``rtn``: round to nearest, the format's own quantizer.
* ``lowrank``: truncated SVD at a rank ratio, the two factors then stored in the group's format (``keep``: as
  they are). How the lab emulates tensor-network compressors such as CompactifAI's.
* ``gptq``, ``imatrix``: data-driven (calibration tokens routed through the model).

Each method gives a ``Quantized`` result: what is stored (packed tensors in the format's real layout) and the
dequantized matrix the variant computes with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Parameters each method accepts, with their defaults.
METHOD_PARAMS = {
    "rtn": {},
    "lowrank": {"rank_ratio": None},
    "gptq": {"damp": 0.01, "block_size": 128, "min_tokens": 32},
    "imatrix": {"min_tokens": 32},
}


def check_method_params(name: str, params: dict) -> dict:
    """The method's parameters with defaults filled in; a ValueError naming the bad one otherwise."""
    allowed = METHOD_PARAMS[name]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise ValueError(f"method {name!r} has no parameter {unknown[0]!r} (its parameters: {known})")
    resolved = allowed | params
    if name == "lowrank":
        ratio = resolved["rank_ratio"]
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio <= 1:
            raise ValueError(f"method lowrank needs rank_ratio in (0, 1], the fraction of min(out, in) kept; got {ratio!r}")
    if name == "gptq" and not (isinstance(resolved["damp"], (int, float)) and 0 < resolved["damp"] < 1):
        raise ValueError(f"method gptq: damp must be in (0, 1), got {resolved['damp']!r}")
    return resolved


@dataclass
class Quantized:
    """One weight matrix after a method: its stored tensors and the values the variant computes with."""

    stored: dict[str, object]  # part name -> Packed ("" for the matrix itself; "a", "b" for low-rank factors)
    dequantized: torch.Tensor  # float32, (out, in)
    notes: dict = field(default_factory=dict)


def rtn(matrix: torch.Tensor, fmt) -> Quantized:
    packed = fmt.quantize(matrix)
    return Quantized({"": packed}, fmt.dequantize(packed).float())


def lowrank(matrix: torch.Tensor, fmt, rank_ratio: float) -> Quantized:
    """W ≈ A·B with A = U·sqrt(S) (out x r), B = sqrt(S)·Vᵀ (r x in), r = ceil(rank_ratio · min(out, in)).

    The SVD runs in float64 so that the factors do not depend on the BLAS's float32 summation order.
    """
    rank = max(1, int(torch.ceil(torch.tensor(rank_ratio * min(matrix.shape))).item()))
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    root = s[:rank].sqrt()
    # Fix each singular vector's sign (SVD's is arbitrary): the largest entry of each column of U positive.
    signs = torch.sign(u[:, :rank].gather(0, u[:, :rank].abs().argmax(dim=0, keepdim=True))).squeeze(0)
    signs[signs == 0] = 1
    a = (u[:, :rank] * root * signs).float()
    b = (root.unsqueeze(1) * vh[:rank] * signs.unsqueeze(1)).float()
    if fmt is None:
        stored = {"a": a, "b": b}
        return Quantized(stored, a @ b, {"rank": rank})
    packed_a, packed_b = fmt.quantize(a), fmt.quantize(b)
    a_hat, b_hat = fmt.dequantize(packed_a).float(), fmt.dequantize(packed_b).float()
    return Quantized({"a": packed_a, "b": packed_b}, a_hat @ b_hat, {"rank": rank})


