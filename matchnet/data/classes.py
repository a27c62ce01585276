"""Classes of image files -> one uint8 grid [classes, per_class, 3, S, S] -> the FewShotSplits of a dataset.

The same number of images per class (the per_class option, else the smallest class's count; classes with fewer
readable images are left out, each named); per-channel mean/std come from the training classes only and travel
with every split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .fewshot import FewShotSplit
from .files import DatasetNotFoundError, note
from .image_cache import decode_files

SPLITS = ("train", "val", "test")


@dataclass
class ImageClasses:
    """images uint8 [classes, per_class, 3, S, S]; class_sums float64 [classes, 2, 3] (sums of x and x^2 per
    channel over the kept images), for per-channel statistics of any set of classes."""

    images: torch.Tensor
    names: list[str]
    class_sums: np.ndarray

    def stats(self, classes: list[int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std over every kept image of the given classes."""
        s = self.class_sums[classes].sum(0)
        count = len(classes) * self.images.shape[1] * self.images.shape[-1] * self.images.shape[-2]
        mean = s[0] / count
        std = np.sqrt(np.maximum(s[1] / count - mean ** 2, 1e-12))
        return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def load_classes(classes: dict[str, list[Path]], base: Path, tag: str, opts: dict,
                 cache_root: Path | None = None) -> ImageClasses:
    """Decode every class's files and keep the same number of images per class (see the per_class option)."""
    names = list(classes)
    files = [f for n in names for f in classes[n]]
    if not files:
        raise DatasetNotFoundError(f"{tag}: no image files under {base}")
    decoded = decode_files(files, base, cache_root or base, tag, {"classes": [[n, len(classes[n])] for n in names]},
                           opts)
    rows, start = {}, 0
    for n in names:
        idx = np.arange(start, start + len(classes[n]))
        rows[n] = idx[decoded.ok[idx]]
        start += len(classes[n])
    empty = [n for n in names if len(rows[n]) == 0]
    if empty:
        note(f"{tag}: left out {len(empty)} class(es) with no readable image: {', '.join(empty[:5])}")
    counts = {n: len(r) for n, r in rows.items() if len(r)}
    if not counts:
        raise DatasetNotFoundError(f"{tag}: none of the {len(files)} image files under {base} could be read")
    per_class = opts["per_class"] or min(counts.values())
    small = sorted((n for n, c in counts.items() if c < per_class), key=lambda n: counts[n])
    if small:
        note(f"{tag}: left out {len(small)} class(es) with fewer than per_class = {per_class} readable images: "
             + ", ".join(f"{n} ({counts[n]})" for n in small[:5]) + (", ..." if len(small) > 5 else ""))
    kept = [n for n in names if counts.get(n, 0) >= per_class]
    if not kept:
        raise DatasetNotFoundError(f"{tag}: no class has per_class = {per_class} readable images")
    if max(counts[n] for n in kept) > per_class:
        smallest = min(kept, key=lambda n: counts[n])
        note(f"{tag}: classes have {min(counts[n] for n in kept)} to {max(counts[n] for n in kept)} readable "
             f"images; every class uses {per_class} (smallest: {smallest!r} with {counts[smallest]}). Data option "
             "per_class sets another number (smaller classes are then left out).")
    rng = np.random.default_rng(opts["seed"])
    index = np.stack([np.sort(rng.choice(rows[n], per_class, replace=False)) if counts[n] > per_class
                      else rows[n] for n in kept])  # [classes, per_class] rows of the decoded array
    flat = decoded.images
    if np.array_equal(index.ravel(), np.arange(len(files))):
        grid = flat.reshape(len(kept), per_class, *flat.shape[1:])  # a view: still memory-mapped
    else:
        grid = flat[index]  # some files skipped or capped: gathered into memory
    images = torch.from_numpy(grid)
    return ImageClasses(images, kept, decoded.sums[index].sum(1))


def make_splits(data: ImageClasses, parts: dict[str, list[str]]) -> dict[str, FewShotSplit]:
    """FewShotSplits over data.images for each part's class names (classes left out at decoding are dropped);
    "trainval" = train + val. Every split carries the training classes' per-channel mean and std."""
    index = {n: i for i, n in enumerate(data.names)}
    ids = {p: [index[n] for n in names if n in index] for p, names in parts.items()}
    ids["trainval"] = ids["train"] + ids["val"]
    for p in SPLITS:
        if not ids[p]:
            raise DatasetNotFoundError(f"the {p} split has no classes with readable images")
    mean, std = data.stats(ids["train"])
    return {p: FewShotSplit(data.images, torch.tensor(v, dtype=torch.long), torch.zeros(len(v), dtype=torch.long),
                            [data.names[i] for i in v], mean, std) for p, v in ids.items()}
