"""Shared fixtures: a small Omniglot-layout tree made by the test, and the real data when it is present."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REAL_ZIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot" / "omniglot-py"


def glyph(rng: np.random.Generator, strokes: np.ndarray, size: int = 105, jitter: int = 4) -> Image.Image:
    """A character drawn as a few thick line segments, shifted a little per drawing (dark ink on white)."""
    img = np.ones((size, size), dtype=bool)
    shift = rng.integers(-jitter, jitter + 1, size=2)
    for (x0, y0, x1, y1) in strokes:
        for t in np.linspace(0, 1, 60):
            x = int(np.clip((x0 + t * (x1 - x0)) * size + shift[0], 3, size - 4))
            y = int(np.clip((y0 + t * (y1 - y0)) * size + shift[1], 3, size - 4))
            img[y - 3:y + 4, x - 3:x + 4] = False
    return Image.fromarray(img)  # mode "1", as the real PNGs


def synthetic_glyphs(classes: int, seed: int = 0, drawings: int = 20) -> torch.Tensor:
    """uint8 [classes, drawings, 28, 28], ink = 255: each class three random strokes, each drawing shifted."""
    rng = np.random.default_rng(seed)
    images = np.zeros((classes, drawings, 28, 28), dtype=np.uint8)
    for c in range(classes):
        strokes = rng.uniform(5, 22, size=(3, 4))
        for d in range(drawings):
            dx, dy = rng.integers(-2, 3, size=2)
            for x0, y0, x1, y1 in strokes:
                for t in np.linspace(0, 1, 30):
                    x = int(np.clip(x0 + t * (x1 - x0) + dx, 1, 26))
                    y = int(np.clip(y0 + t * (y1 - y0) + dy, 1, 26))
                    images[c, d, y - 1:y + 1, x - 1:x + 1] = 255
    return torch.from_numpy(images)


def make_tree(root: Path, alphabets: int = 2, characters: int = 3, seed: int = 0) -> Path:
    """ROOT/omniglot-py/images_{background,evaluation}/<Alphabet>/characterNN/IIII_DD.png, 20 drawings each."""
    rng = np.random.default_rng(seed)
    ident = 1
    for part in ("images_background", "images_evaluation"):
        for a in range(alphabets):
            for c in range(characters):
                folder = root / "omniglot-py" / part / f"{part[7:]}_Alphabet{a}" / f"character{c + 1:02d}"
                folder.mkdir(parents=True)
                strokes = rng.uniform(0.15, 0.85, size=(3, 4))
                for d in range(20):
                    glyph(rng, strokes).save(folder / f"{ident:04d}_{d + 1:02d}.png")
                ident += 1
    return root


@pytest.fixture(scope="session")
def omniglot_tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("omniglot"))


@pytest.fixture(scope="session")
def real_omniglot_root(tmp_path_factory) -> Path | None:
    """The real zips (../shared/data) linked into a temporary root, read without unzipping; None if absent."""
    if not all((REAL_ZIPS / f"{p}.zip").is_file() for p in ("images_background", "images_evaluation")):
        return None
    root = tmp_path_factory.mktemp("real") / "omniglot-py"
    root.mkdir()
    for p in ("images_background", "images_evaluation"):
        os.symlink(REAL_ZIPS / f"{p}.zip", root / f"{p}.zip")
    return root.parent
