"""Number formats, each exact to the implementation users deploy, behind one protocol (see ``base``).

Importing this package registers every format (each module registers its own); the look-ups live here, so a
format is found only once all of them are registered.
"""

from quantlab.errors import UserError
from quantlab.formats import bnb, casts, fp8, gguf, integer, mx  # noqa: F401  (registers the formats)
from quantlab.formats.base import _REGISTRY, Format, Packed

__all__ = ["Format", "Packed", "available_formats", "get_format"]


def get_format(name: str, **params) -> Format:
    """The format a recipe names, e.g. ``get_format("int4", group_size=32, symmetric=True)``."""
    key = name.strip()
    factory = _REGISTRY.get(key) or _REGISTRY.get(key.lower())
    if factory is None:
        known = ", ".join(sorted(_REGISTRY))
        raise UserError(f"unknown format {name!r}; known formats: {known}")
    try:
        return factory(**params)
    except TypeError as error:
        raise UserError(f"format {name!r}: bad parameters {params} ({error})") from None


def available_formats() -> list[str]:
    return sorted(_REGISTRY)
