"""GPTQ (Frantar et al., 2022) for the integer formats: codes chosen column by column, each column's rounding
error spread over the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs.

The grid is the ``intN`` format's own (``scale_and_zero``: float16 scale, GPTQ's zero point), computed for
each group when GPTQ reaches the group's first column (from the weights as updated by the blocks before, as
GPTQ and GPTQModel do without static groups), so the result is stored exactly like RTN: codes, float16
scales, zero points, and decodes with the same ``dequantize``. One deliberate difference from GPTQModel:
codes are chosen with the float16 scale that is stored, not the float32 one before rounding, so that the
stored codes are the ones the error feedback assumed.

``tests/test_gptq.py`` cross-checks this against GPTQModel's GPTQ on a dense layer with the same inputs.
"""

from __future__ import annotations

import torch

from quantlab.formats import Packed
from quantlab.formats.integer import IntegerRTN, codes_on_grid, pack_bits, scale_and_zero


def gptq_quantize(
    weight: torch.Tensor, gram: torch.Tensor, tokens: int, fmt: IntegerRTN, damp: float = 0.01, block_size: int = 128
) -> Packed:
    """The packed ``fmt`` codes GPTQ chooses for ``weight`` (out, in), given Σ x xᵀ of its inputs."""
    w = weight.detach().float().clone()
    rows, columns = w.shape
    hessian = (2.0 * gram / max(tokens, 1)).float()
    dead = hessian.diagonal() == 0  # columns no input ever used: any value works, GPTQ sets them to 0
    hessian[dead, dead] = 1.0
    w[:, dead] = 0.0
    hessian += damp * hessian.diagonal().mean() * torch.eye(columns)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)

    group = fmt.group_size or columns
    n_groups = columns // group
    scales = torch.empty(rows, n_groups, dtype=torch.float16)
    zeros = torch.empty(rows, n_groups)
    codes = torch.empty(rows, columns)
    scale32 = zero = torch.empty(0)  # set at each group's first column (column 0 starts one)
    # the rank-1 update's products, written into one buffer: a fresh (rows, block) temporary per column is 2880
    # allocations per matrix, each fresh memory from the system when large blocks are mmapped (the streaming build)
    update = torch.empty(rows, block_size)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block = w[:, start:end].clone()
        errors = torch.zeros_like(block)
        inv_block = inverse[start:end, start:end]
        for i in range(end - start):
            column = start + i
            if column % group == 0:
                # A new group: its grid from the weights as they stood when this block began (the reference
                # GPTQ and GPTQModel read the outer matrix here, which the lazy batch update changes only
                # between blocks).
                g = column // group
                scale16, scale32, zero = scale_and_zero(w[:, column : column + group].unsqueeze(1), fmt)
                scale32, zero = scale32[:, 0], zero[:, 0]
                scales[:, g], zeros[:, g] = scale16[:, 0], zero
            q = codes_on_grid(block[:, i], scale32, zero, fmt.max_code)
            codes[:, column] = q
            dequantized = scale32 * (q - zero)
            error = (block[:, i] - dequantized) / inv_block[i, i]
            products = update[:, : end - start - i]
            torch.mul(error.unsqueeze(1), inv_block[i, i:].unsqueeze(0), out=products)
            block[:, i:] -= products
            errors[:, i] = error
        w[:, end:] -= errors @ inverse[start:end, end:]
    stored = {"codes": pack_bits(codes, fmt.bits), "scale": scales} | (
        {} if fmt.symmetric else {"zero": zeros.to(torch.uint8)}
    )
    return Packed(fmt.describe(), tuple(weight.shape), stored)
