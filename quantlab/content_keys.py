"""Content keys: the one way the lab names "the same inputs" (a build, a measurement, an evaluation, ...)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def content_key(inputs: Any, length: int | None = None) -> str:
    """Hex SHA-256 of ``inputs`` as canonical JSON (sorted keys); ``length`` keeps that many leading digits.

    Every cache decision in the store compares two such keys: equal inputs give equal keys on any machine."""
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    return digest if length is None else digest[:length]


def sha256_file(path: Path | str, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
