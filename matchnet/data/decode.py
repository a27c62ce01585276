"""Decoding one natural image file into the uint8 array the datasets hold, and the report of what was skipped.

A corrupt or unreadable file (a FIFO included: matchnet.data.files.open_regular) is skipped and counted, never an
exception halfway through a decode of thousands; non-RGB images (grayscale, CMYK, palette) are converted and
counted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .files import note, open_regular


def decode_image(path: str, size: int, resize: str) -> tuple[np.ndarray | None, str, str]:
    """(uint8 [3, size, size] or None, the error if unreadable, the file's mode). Never raises."""
    try:
        with open_regular(path) as f, Image.open(f) as img:
            mode = img.mode
            if img.format == "JPEG":  # decode at a reduced scale when the file is much larger: far faster
                img.draft("RGB", (size, size) if resize == "stretch" else (size * 2, size * 2))
            img.load()
            img = img.convert("RGB")
            w, h = img.size
            if resize == "crop" and w != h:
                side = min(w, h)
                img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
            if img.size != (size, size):
                img = img.resize((size, size), Image.LANCZOS)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy(), "", mode
    except Exception as e:  # noqa: BLE001 -- any unreadable file is skipped and reported, never fatal
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}", ""


@dataclass
class Decoded:
    """Every listed file, decoded: images uint8 [N, 3, S, S] (memory-mapped when cached), per-image channel
    sums of x and x^2 (x in [0, 1]; float64 [N, 2, 3]), ok = False for a file that could not be read."""

    images: np.ndarray
    sums: np.ndarray
    ok: np.ndarray
    skipped: list[list[str]]  # [file, error]
    converted: dict[str, int]  # mode -> count of non-RGB images converted to RGB


def report(decoded: Decoded, tag: str, from_cache: bool) -> None:
    """One line for skipped files and one for converted ones, naming the first few: the user sees what happened."""
    when = " (when the cache was built)" if from_cache else ""
    if decoded.skipped:
        shown = "; ".join(f"{f}: {e}" for f, e in decoded.skipped[:3])
        more = f"; and {len(decoded.skipped) - 3} more" if len(decoded.skipped) > 3 else ""
        note(f"{tag}: skipped {len(decoded.skipped)} unreadable image(s){when}: {shown}{more}")
    if decoded.converted:
        modes = ", ".join(f"{n} {m}" for m, n in sorted(decoded.converted.items()))
        note(f"{tag}: converted non-RGB images to RGB{when}: {modes}")
