"""Writing into the store: atomic directory and file writes (all of it or nothing), a full disk as one line,
and file hashes."""

from __future__ import annotations

import contextlib
import errno
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


def _megabytes(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def check_free_space(folder: Path, needed_bytes: int, what: str) -> None:
    """A one-line error before writing when ``folder``'s file system has less room than ``needed_bytes``."""
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise UserError(
            f"{folder}: not enough disk space for {what} (needs at least {_megabytes(needed_bytes)}, "
            f"{_megabytes(free)} free); free some space or choose another --artifacts"
        )


def disk_full(error: OSError, folder: Path, what: str, needed_bytes: int | None = None) -> UserError:
    """The one line a full disk gives (``error`` is ENOSPC or EDQUOT)."""
    need = f"needs more than {_megabytes(needed_bytes)}, " if needed_bytes else ""
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    return UserError(
        f"{folder}: disk full while writing {what} ({need}{_megabytes(free)} free; nothing was "
        "written); free some space or choose another --artifacts"
    )


def _is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_directory(path: Path, force: bool = False, needed_bytes: int | None = None):
    """Yields a temporary sibling directory that replaces ``path`` only if the block completes. A full disk
    (checked first against ``needed_bytes`` when given) is a one-line ``UserError``; nothing is left behind."""
    path = Path(path)
    check_output_directory(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"{path.parent}: cannot create the folder ({error.strerror}); choose another --artifacts"
        ) from None
    _remove_abandoned_temporaries(path)
    if needed_bytes:
        check_free_space(path.parent, needed_bytes, path.name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    except OSError as error:
        raise (disk_full(error, path.parent, path.name, needed_bytes) if _is_disk_full(error) else error) from None
    try:
        try:
            yield tmp
        except Exception as error:
            # Writers deep inside torch / safetensors / gguf report a full disk in their own ways (an OSError, a
            # RuntimeError naming "No space left"): one line for the user, the temporary folder removed below.
            if _is_disk_full(error) or "No space left on device" in str(error):
                raise disk_full(error, path.parent, path.name, needed_bytes) from None  # type: ignore[arg-type]
            raise
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
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(error):
            raise disk_full(error, path.parent, path.name, len(text.encode())) from None  # type: ignore[arg-type]
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
