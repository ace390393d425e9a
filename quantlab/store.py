"""Artifact storage primitives: atomic directory writes and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from quantlab.errors import UserError


def check_output_directory(path: Path, force: bool) -> None:
    """Refuses an output path that is a file, or a non-empty directory unless ``force``."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a directory; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UserError(f"{path}: directory is not empty; choose another --out or pass --force to replace it")


@contextlib.contextmanager
def atomic_directory(path: Path, force: bool = False):
    """Yields a temporary sibling directory that replaces ``path`` only if the block completes."""
    path = Path(path)
    check_output_directory(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary output directory
        for child in tmp.rglob("*"):
            if child.is_file():
                child.chmod(0o644)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary sibling and renames it over ``path``: readers see all of it or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_abandoned_temporaries(path: Path) -> None:
    """Removes temporary siblings of ``path`` left by a writer that was killed (its process no longer runs)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
