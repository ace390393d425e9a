"""Records as JSON files: read with a one-line error for a corrupt one, written with numpy and sets made plain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from quantlab.errors import UserError


def read_json(path: Path) -> dict:
    """A stored record; a corrupt or unreadable one is a one-line error naming the file."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise UserError(
            f"{path}: unreadable record ({reason}); delete it and re-run the command that wrote it"
        ) from None
    if not isinstance(value, dict):
        raise UserError(
            f"{path}: not a quantlab record (a JSON object); delete it and re-run the command that wrote it"
        )
    return value


def record_json(record: dict[str, Any], indent: int = 1, default: Any = None) -> str:
    """A record as the store writes it: numpy scalars and sets made plain (``default``: another fallback, such
    as ``str`` for lm-eval's configs, which hold functions)."""
    return json.dumps(record, indent=indent, default=default or _plain) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
