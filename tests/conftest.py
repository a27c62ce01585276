"""Shared fixtures: a small Omniglot-layout tree made by the test, and the real data when it is present.

Real data is looked for in the README's data root (./data) and in ../shared/data (where CI keeps it). Where it
is missing, a real-data test is skipped on a developer's machine and FAILS when the environment variable CI is
set: CI has the data, so a skip there means a test silently stopped running. A test needing real data takes
one of the real_* fixtures (or calls `missing_real_data`); the hook at the bottom also fails, under CI, any
skip of a test that takes a real_* fixture, is marked `real_data`, or whose reason names ../shared/data.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# The README's data root first (a user's own copy), then the shared read-only copy CI has.
DATA_ROOTS = (REPO / "data", REPO.parent / "shared" / "data")
OMNIGLOT_PARTS = ("images_background", "images_evaluation")
REAL_DATA_FIXTURES = ("real_omniglot_root", "real_ptb_dir", "real_mnist_root")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing_real_data(what: str) -> None:
    """Skip (a developer without the data) or fail (CI, which has it): never a silent pass in CI."""
    where = " or ".join(str(r) for r in DATA_ROOTS)
    message = f"{what} not found under {where}"
    if in_ci():
        pytest.fail(f"{message}; CI must run every real-data test (CI is set)", pytrace=False)
    pytest.skip(message)


def find_omniglot_folder() -> Path | None:
    """The first omniglot-py folder holding both parts (as zips or unzipped folders): ./data/omniglot-py
    (the README's layout) or ../shared/data/omniglot/omniglot-py (the shared copy's)."""
    for root in DATA_ROOTS:
        for folder in (root / "omniglot-py", root / "omniglot" / "omniglot-py"):
            if all((folder / f"{p}.zip").is_file() or (folder / p).is_dir() for p in OMNIGLOT_PARTS):
                return folder
    return None


def find_ptb_dir() -> Path | None:
    for root in DATA_ROOTS:
        if all((root / "ptb" / f"ptb.{part}.txt").is_file() for part in ("train", "valid", "test")):
            return root / "ptb"
    return None


def find_mnist_root() -> Path | None:
    """A data root whose mnist/MNIST/raw holds the test images and labels (plain or .gz)."""
    for root in DATA_ROOTS:
        raw = root / "mnist" / "MNIST" / "raw"
        if all((raw / f).is_file() or (raw / f"{f}.gz").is_file()
               for f in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
            return root
    return None


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
def real_omniglot_root(tmp_path_factory) -> Path:
    """The real Omniglot (zips or folders) linked into a temporary root, so the first read's cache is written
    there and never into ./data or the read-only shared copy. Skips (fails under CI) when absent."""
    found = find_omniglot_folder()
    if found is None:
        missing_real_data("the real Omniglot (omniglot-py/images_background and images_evaluation)")
    root = tmp_path_factory.mktemp("real") / "omniglot-py"
    root.mkdir()
    for p in OMNIGLOT_PARTS:
        source = found / f"{p}.zip" if (found / f"{p}.zip").is_file() else found / p
        os.symlink(source, root / source.name)
    return root.parent


@pytest.fixture(scope="session")
def real_ptb_dir() -> Path:
    """The folder holding ptb.train.txt, ptb.valid.txt and ptb.test.txt. Skips (fails under CI) when absent."""
    found = find_ptb_dir()
    if found is None:
        missing_real_data("Penn Treebank (ptb/ptb.{train,valid,test}.txt)")
    return found


@pytest.fixture(scope="session")
def real_mnist_root() -> Path:
    """A data root with MNIST's test set (mnist/MNIST/raw). Skips (fails under CI) when absent."""
    found = find_mnist_root()
    if found is None:
        missing_real_data("the MNIST test set (mnist/MNIST/raw/t10k-*)")
    return found


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "real_data: needs the real data sets; a skip of it fails under CI")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, a skipped real-data test is reported as failed: CI has ../shared/data, so a skip there is a
    test that stopped running, not a pass. Catches skips raised outside the real_* fixtures too."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    needs_data = (any(name in getattr(item, "fixturenames", ()) for name in REAL_DATA_FIXTURES)
                  or item.get_closest_marker("real_data") is not None or "shared/data" in reason)
    if needs_data:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where the real data must be present: {reason}"
