"""Any folder of class images (dataset "folder"): ROOT/<class>/*.{jpg,jpeg,png,...}, its classes split into
train / val / test by given class lists (split "lists") or by a seeded proportion (split "random")."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .classes import SPLITS, load_classes, make_splits
from .fewshot import FewShotSplit
from .files import IMAGE_EXTENSIONS, DatasetNotFoundError, image_files, note
from .options import FOLDER_OPTIONS, check_options


def folder_classes(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise DatasetNotFoundError(f"no image folder at {root}: expected ROOT/<class>/*.jpg (or .png, ...)")
    classes = {d.name: image_files(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    empty = [n for n, fs in classes.items() if not fs]
    if empty:
        note(f"{root}: left out {len(empty)} folder(s) with no image files: "
             + ", ".join(str(root / n) for n in empty[:5]))
    classes = {n: fs for n, fs in classes.items() if fs}
    if not classes:
        raise DatasetNotFoundError(f"no class folders with images under {root}: expected ROOT/<class>/*.jpg "
                                   f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return classes


def _class_list(value: list | str, key: str) -> list[str]:
    if isinstance(value, str):  # a text file, one class per line
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"data option {key}: no such file {path}")
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not all(isinstance(v, str) for v in value):
        raise ValueError(f"data option {key} should be a list of class folder names or a text file")
    return list(value)


def folder_parts(names: list[str], split: str, opts: dict) -> dict[str, list[str]]:
    """Class names of train / val / test: from the given lists, or a seeded random partition by proportions."""
    keys = [f"{p}_classes" for p in SPLITS]
    given = [k for k in keys if opts[k] is not None]
    if split == "lists":
        if len(given) != 3:
            raise ValueError(f"split 'lists' needs data options {keys}; missing {sorted(set(keys) - set(given))}")
        parts = {p: _class_list(opts[f"{p}_classes"], f"{p}_classes") for p in SPLITS}
        unknown = sorted({n for v in parts.values() for n in v} - set(names))
        if unknown:
            raise ValueError(f"class list(s) name folders that do not exist or hold no images: {unknown[:5]}")
        seen: dict[str, str] = {}
        for p, v in parts.items():
            for n in v:
                if n in seen:
                    raise ValueError(f"class {n!r} is in both {seen[n]}_classes and {p}_classes")
                seen[n] = p
        return parts
    if split == "random":
        if given:
            raise ValueError(f"split 'random' draws the classes itself; {given} are for split 'lists'")
        props = opts["proportions"]
        if len(props) != 3 or not all(isinstance(x, (int, float)) and x >= 0 for x in props) or not sum(props):
            raise ValueError(f"data option proportions should be three non-negative numbers, got {props!r}")
        order = [names[i] for i in np.random.default_rng(opts["seed"]).permutation(len(names))]
        n_train = round(len(names) * props[0] / sum(props))
        n_val = round(len(names) * props[1] / sum(props))
        parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
        for p, v in parts.items():
            if not v:
                raise ValueError(f"{len(names)} classes split by proportions {props} leave the {p} split empty")
        return {p: sorted(v) for p, v in parts.items()}
    raise ValueError(f"dataset 'folder' takes split 'random' (data options proportions, seed) or 'lists' (data "
                     f"options train_classes, val_classes, test_classes), not {split!r}")


def load_image_folder(root: str | os.PathLike, split: str = "random", download: bool = False,
                      **options: Any) -> dict[str, FewShotSplit]:
    """Any ROOT/<class>/*.jpg folder as train / val / test (+ trainval) splits of whole classes."""
    opts = check_options("folder", options, FOLDER_OPTIONS)
    if download:
        raise ValueError("dataset 'folder' reads your own images; there is nothing to download")
    root = Path(root).expanduser()
    classes = folder_classes(root)
    parts = folder_parts(list(classes), split, opts)
    used = {n for v in parts.values() for n in v}
    data = load_classes({n: fs for n, fs in classes.items() if n in used}, root, "folder", opts)
    return make_splits(data, parts)
