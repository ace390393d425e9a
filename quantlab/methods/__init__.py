"""Methods: how a group's format picks its values from a weight (and, for data-driven methods, from activations).

* ``rtn``: round to nearest, the format's own quantizer (``rtn.py``).
* ``lowrank``: truncated SVD at a rank ratio, the factors stored in the group's format (``lowrank.py``).
* ``gptq``, ``imatrix``: data-driven, from calibration tokens routed through the model (``calibrated.py``).

Each is a registered ``Method`` (``base.py``); ``get_method(name)`` finds it. Each gives a ``Quantized``
result: what is stored (packed tensors in the format's real layout) and the dequantized matrix.
"""

from quantlab.methods.base import DEFAULT_METHOD, Method, Quantized
from quantlab.methods.calibrated import GPTQ, Imatrix
from quantlab.methods.lowrank import LowRank, lowrank, lowrank_rank
from quantlab.methods.rtn import RoundToNearest, rtn

__all__ = [
    "DEFAULT_METHOD",
    "GPTQ",
    "Imatrix",
    "LowRank",
    "Method",
    "Quantized",
    "RoundToNearest",
    "get_method",
    "lowrank",
    "lowrank_rank",
    "method_names",
    "rtn",
]


def get_method(name: str) -> Method:
    """The registered method called ``name``; a one-line error listing the known ones otherwise."""
    return Method.lookup(name)


def method_names() -> list[str]:
    return Method.names()
