"""What a method is: typed parameters, whether it needs calibration, which formats it fits, how it applies.

A method is one subclass of ``Method`` registered under its recipe name (``class GPTQ(Method, name="gptq")``),
as the formats are. Everything else in the lab asks the method, never compares its name: the plan asks for
the shapes it stores, the build for calibration and ``apply``, attribution for its label and whether it changes
a model without its group's format.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from quantlab.formats.base import Packed
from quantlab.registry import Registered

DEFAULT_METHOD = "rtn"  # a group without a method: the format's own round-to-nearest


@dataclass
class Quantized:
    """One weight matrix after a method: its stored tensors and the values the variant computes with."""

    # part name -> Packed ("" for the matrix itself), or a tensor kept as it is ("a", "b": low-rank factors)
    stored: dict[str, Packed | torch.Tensor]
    dequantized: torch.Tensor  # float32, (out, in)
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NoParams:
    """A method without parameters."""


class Method(Registered):
    """A registered method. Subclasses set ``Params`` (a dataclass whose fields are the recipe keys, checked in
    ``__post_init__`` with a ValueError naming the bad one) and implement ``apply``."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    needs_calibration: ClassVar[bool] = False  # reads the routed inputs of each matrix (calibration tokens)
    plain_rounding: ClassVar[bool] = False  # nothing beyond the format's own quantizer: not a choice of its own
    changes_weights_alone: ClassVar[bool] = False  # applied with the format left out (``keep``), it still changes
    # the weights (a low-rank factorisation does; a data-driven rounding without a format to round to does not)
    stores_factors: ClassVar[bool] = False  # the format applies to factors of the matrix, not to the matrix
    kind: ClassVar[str] = "method"
    _entries: ClassVar[dict[str, Registered]] = {}

    def params(self, given: dict[str, Any]) -> Any:
        """The typed parameters from a recipe's mapping, defaults filled in; a ValueError naming the bad one."""
        known = [f.name for f in dataclasses.fields(self.Params)]
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(
                f"method {self.name!r} has no parameter {unknown[0]!r} (its parameters: {', '.join(known) or 'none'})"
            )
        missing = [
            f.name
            for f in dataclasses.fields(self.Params)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in given
        ]
        if missing:
            return self.Params(**given, **dict.fromkeys(missing))  # __post_init__ says what the value must be
        return self.Params(**given)

    def format_problem(self, format_name: str) -> str | None:
        """Why this method cannot take the format (a sentence), or None when it can."""
        return None

    def stored_shapes(self, shape: tuple[int, int], params: Any) -> list[tuple[int, int]]:
        """The shapes the group's format is applied to: the matrix itself, or (low rank) its factors."""
        return [shape]

    def label(self, given: dict[str, Any]) -> str:
        """How a reader sees the choice with the parameters a recipe gave (attribution tables)."""
        return self.name + ("(" + ", ".join(f"{k}={v}" for k, v in given.items()) + ")" if given else "")

    def apply(self, matrix: torch.Tensor, fmt, params: Any, statistics=None, component: str = "") -> Quantized:
        """The matrix (out, in) quantized to ``fmt`` (None: kept as it is) by this method."""
        raise NotImplementedError
