"""Number formats, each exact to the implementation users deploy, behind one protocol (see ``base``)."""

from quantlab.formats import bnb, casts, fp8, gguf, integer, mx  # noqa: F401  (registers the formats)
from quantlab.formats.base import Format, Packed, available_formats, get_format

__all__ = ["Format", "Packed", "available_formats", "get_format"]
