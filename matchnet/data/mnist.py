"""MNIST's test set as a 10-class few-shot split, for the paper's transfer test (Omniglot-trained models on
one-shot 10-way MNIST, section 4.1.1). Read straight from the idx files; torchvision is not needed.

Layout: ROOT/mnist/MNIST/raw/ (torchvision's), ROOT/mnist/raw/, ROOT/mnist/ or ROOT/MNIST/raw/, holding
t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each plain or .gz. Only the test files are used: the
transfer test never trains on MNIST.

Polarity: MNIST stores ink as high values (white digits on black, 0..255), the convention matchnet uses for
Omniglot (ink = 255, paper = 0), so images are kept as stored. Digits are not rescaled: both datasets are
28x28 with ink roughly centred, MNIST's strokes are thicker and its digits fill a 20x20 box.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .fewshot import FewShotSplit
from .files import DatasetNotFoundError

IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
# idx type codes (the third byte of the magic number) -> big-endian numpy dtypes
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
LAYOUT_HELP = ("Expected t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz) in ROOT/mnist/MNIST/raw/ "
               "(torchvision's layout), ROOT/mnist/raw/, ROOT/mnist/ or ROOT/MNIST/raw/.")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An idx file (LeCun's format; gzip if the name ends in .gz) as an array of its stored shape and type."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise ValueError(f"{path}: not an idx file (magic bytes {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    offset = 4 + 4 * ndim
    if len(raw) - offset != dtype.itemsize * int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} of {dtype}, but {len(raw) - offset} data bytes follow")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def find_mnist(root: str | os.PathLike) -> Path:
    """The folder under ROOT that holds the MNIST test files."""
    root = Path(root).expanduser()
    for folder in (root / "mnist" / "MNIST" / "raw", root / "mnist" / "raw", root / "mnist", root / "MNIST" / "raw",
                   root):
        if all(_file(folder, name) is not None for name in (IMAGES, LABELS)):
            return folder
    raise DatasetNotFoundError(f"No MNIST test files under {root}. {LAYOUT_HELP}")


def _file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def mnist_split(images: np.ndarray, labels: np.ndarray, per_class: int | None = None) -> FewShotSplit:
    """Ten classes (the digits), each the first `per_class` images of that digit in file order (default: as
    many as the rarest digit has, so that every class has the same number, as FewShotSplit requires)."""
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"expected images [N, H, W] and N labels, got {images.shape} and {labels.shape}")
    counts = np.bincount(labels, minlength=10)
    per_class = int(counts.min()) if per_class is None else per_class
    if per_class < 1 or per_class > counts.min():
        raise ValueError(f"per_class={per_class}, but the rarest digit has {int(counts.min())} images")
    grouped = np.stack([images[labels == d][:per_class] for d in range(10)])  # [10, per_class, H, W]
    return FewShotSplit(torch.from_numpy(np.ascontiguousarray(grouped, dtype=np.uint8)), torch.arange(10),
                        torch.zeros(10, dtype=torch.long), [f"digit{d}" for d in range(10)])


def load_mnist(root: str | os.PathLike, per_class: int | None = None) -> FewShotSplit:
    """MNIST's 10,000 test images as a 10-class FewShotSplit (892 per digit by default), ink = 255."""
    folder = find_mnist(root)
    return mnist_split(read_idx(_file(folder, IMAGES)), read_idx(_file(folder, LABELS)).astype(np.int64),
                       per_class)
