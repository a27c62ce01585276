"""Data files on disk: the errors every loader raises about them, which files count as images, opening only
regular files, and the one-line notes the loaders print about what they left out.

A FIFO (or a device, a socket) with an image's name would block open() or read() forever: it is refused here
with a line naming it, never waited on.
"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


class DatasetNotFoundError(FileNotFoundError):
    """The data folder is missing or incomplete; the message names the expected layout."""


class CorruptDataError(DatasetNotFoundError):
    """A data file exists but cannot be read (truncated zip, corrupt image); the message names the file and the fix.

    A DatasetNotFoundError, so every caller that reports missing data reports this too."""


class NotRegularFileError(OSError):
    """A path that names a FIFO, a device or a socket where a data file was expected."""


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a file for reading in binary mode, or raise NotRegularFileError if it is not a regular file.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; the check then runs on the
    opened descriptor (no window between a check and the open), and a regular file goes back to blocking reads."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(f"{path}: not a regular file (a FIFO, device or socket); put the data file "
                                      "itself there")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file (NotRegularFileError otherwise, see open_regular)."""
    with open_regular(path) as f:
        return f.read()


def image_files(folder: Path) -> list[Path]:
    """Image files under a class folder (any depth), sorted; hidden files and other extensions are ignored, and
    anything with an image's name that is not a regular file (a FIFO, a device, a broken link) is left out with
    one line naming it."""
    found, odd = [], []
    for p in folder.rglob("*"):
        hidden = any(part.startswith(".") for part in p.relative_to(folder).parts)
        if hidden or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.is_file():
            found.append(p)
        elif not p.is_dir():
            odd.append(p)
    if odd:
        odd.sort()
        note(f"{folder}: left out {len(odd)} file(s) that are not regular files (a FIFO, device, socket or broken "
             f"link): {', '.join(str(p) for p in odd[:3])}" + (", ..." if len(odd) > 3 else ""))
    return sorted(found)
