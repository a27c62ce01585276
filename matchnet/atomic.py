"""The one way this project writes a file: a temporary file in the same folder, flushed to disk, renamed over
the target. A crash, a kill or a power cut leaves the old file or the new one, never half of one.

Temporary files have one name pattern, `.<name>.partial-<pid>-<token>`, so that whatever a killed process
left behind can be found and removed (`clean_partials`) without touching anything else.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

MARK = ".partial-"


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}{MARK}{os.getpid()}-{secrets.token_hex(4)}")


def is_partial(path: str | os.PathLike) -> bool:
    name = Path(path).name
    return name.startswith(".") and MARK in name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed over `path`, on failure removed.

    mode: permission bits for the finished file (e.g. 0o644 for a data cache others read)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_with(path: str | os.PathLike, write: Callable[[str], object], mode: int | None = None) -> Path:
    """write(temporary path as str), then move it over `path` atomically (for writers that take a file name)."""
    with atomic_path(path, mode) as tmp:
        write(str(tmp))
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    with atomic_path(path, mode) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    return write_bytes(path, text.encode("utf-8"), mode)


def clean_partials(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove the temporary files that killed writers left in `folder`; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(f".*{MARK}*") if recursive else folder.glob(f".*{MARK}*")
    removed = []
    for p in found:
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
