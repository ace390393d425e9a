"""The one protocol every number format follows, and the registry recipes name formats through.

A format turns a float weight into a ``Packed`` object that holds exactly what the format stores (integer codes,
scales in their stored dtype, for GGUF the ggml block bytes) and turns that back into floats. Blocks run along
the last dimension, which for an ``nn.Linear`` weight ``(out_features, in_features)`` is the input dimension,
as in every runtime that stores these formats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from quantlab.errors import UserError


@dataclass
class Packed:
    """A quantized tensor in its format's real stored representation."""

    format: str  # the registry name with its parameters, e.g. "int4(group_size=32, symmetric=True)"
    shape: tuple[int, ...]  # shape of the original weight
    data: dict[str, torch.Tensor]  # what the format stores: codes, scales, zero points, raw block bytes
    fallback: str | None = None  # set when the format substituted another one for this shape; never silent
    notes: dict = field(default_factory=dict)

    @property
    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.data.values())


class Format:
    """Base class: subclasses set ``name`` and implement ``quantize`` / ``dequantize`` / ``bits_per_weight``."""

    name: str = ""
    row_multiple: int = 1  # rows (the last dimension) must be a multiple of this

    def quantize(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> Packed:
        raise NotImplementedError

    def dequantize(self, packed: Packed) -> torch.Tensor:
        raise NotImplementedError

    @property
    def bits_per_weight(self) -> float:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def shape_problem(self, shape: tuple[int, ...]) -> str | None:
        """Why a weight of this shape cannot be stored in this format (None if it can), without quantizing."""
        if shape[-1] % self.row_multiple:
            return (
                f"rows of {shape[-1]} values are not a multiple of {self.row_multiple}, which {self.describe()} needs"
            )
        return None

    def __repr__(self) -> str:
        return self.describe()

    def roundtrip(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
        """``dequantize(quantize(weight))``: the values a model with this format computes with."""
        return self.dequantize(self.quantize(weight, importance))

    # helpers for subclasses
    def _check_finite(self, weight: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(weight):
            raise UserError(f"{self.describe()}: weight must be a float tensor, got {weight.dtype}")
        if weight.dim() == 0 or weight.numel() == 0:
            raise UserError(f"{self.describe()}: weight of shape {tuple(weight.shape)} has no values to quantize")
        # A NaN or Inf anywhere makes the sum non-finite: one cheap reduction, the exact check only then
        # (a finite sum can also overflow, so the exact check decides).
        if not torch.isfinite(weight.sum()) and not torch.isfinite(weight).all():
            raise UserError(f"{self.describe()}: weight of shape {tuple(weight.shape)} holds NaN or Inf values")
        return weight

    def _check_row_multiple(self, weight: torch.Tensor, multiple: int) -> None:
        if weight.shape[-1] % multiple:
            raise UserError(
                f"{self.describe()}: tensor of shape {tuple(weight.shape)} has rows of {weight.shape[-1]} values; "
                f"the format needs a multiple of {multiple}. Choose another format for this tensor in the recipe"
            )


_REGISTRY: dict[str, Callable[..., Format]] = {}


def register(name: str):
    """Class decorator: makes a format available to ``get_format(name, **params)``."""

    def add(factory):
        _REGISTRY[name] = factory
        return factory

    return add
