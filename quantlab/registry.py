"""The registry pattern the formats' neighbours share: a class registers itself under a name by subclassing
(``class GPTQ(Method, name="gptq")``), and ``lookup`` finds it or names the known ones in one line."""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from quantlab.errors import UserError

T = TypeVar("T", bound="Registered")


class Registered:
    """Base of a registered kind. Each kind's base sets ``kind`` (how errors call it) and its own ``_entries``."""

    name: ClassVar[str]
    kind: ClassVar[str] = "entry"
    _entries: ClassVar[dict[str, Registered]]

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "_entries" in cls.__dict__:  # the kind's own base: a fresh table
            return
        if name is not None:
            cls.name = name
            cls._entries[name] = cls()

    @classmethod
    def lookup(cls: type[T], name: str) -> T:
        """The instance registered as ``name``; a one-line error listing the known ones otherwise."""
        try:
            return cls._entries[name]  # type: ignore[return-value]
        except KeyError:
            raise UserError(f"unknown {cls.kind} {name!r}; known: {', '.join(cls.names())}") from None

    @classmethod
    def names(cls) -> list[str]:
        return list(cls._entries)
