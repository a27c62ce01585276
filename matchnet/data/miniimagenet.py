"""miniImageNet (Vinyals et al.'s 100 ImageNet classes, Ravi & Larochelle's 64 / 16 / 20 split) in its two layouts.

ROOT is the data root; the dataset folder is ROOT itself or ROOT/miniimagenet, ROOT/miniImagenet, ...:
  Ravi & Larochelle's files:  DIR/images/*.jpg + train.csv, val.csv, test.csv (`filename,label`), the CSVs in
      DIR, DIR/splits/ravi/ or the folder given as data option csv_dir
  class folders:              DIR/{train,val,test}/<wnid>/*.jpg
Every file a CSV lists is checked before any decoding; decoding and the cache are matchnet.data.image_cache's.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path, PureWindowsPath
from typing import Any

from .classes import SPLITS, load_classes, make_splits
from .fewshot import FewShotSplit
from .files import DatasetNotFoundError, image_files, read_regular
from .options import MINI_OPTIONS, check_options

MINI_DIRS = ("", "miniimagenet", "miniImagenet", "miniImageNet", "mini-imagenet", "mini_imagenet")
MINI_HELP = (
    "Expected miniImageNet in one of two layouts under the data root (or its miniimagenet/ folder): "
    "(a) Ravi & Larochelle's images/*.jpg with train.csv, val.csv, test.csv (`filename,label`; the CSVs may also "
    "sit in splits/ravi/ or in the folder given by data option csv_dir), or (b) class folders "
    "{train,val,test}/<wnid>/*.jpg. matchnet cannot download miniImageNet (ImageNet's terms of access); "
    "Ravi's split CSVs are twitter/meta-learning-lstm's data/miniImagenet/{train,val,test}.csv."
)


def _find_csvs(folder: Path, csv_dir: str) -> Path | None:
    places = [Path(csv_dir).expanduser()] if csv_dir else [folder, folder / "splits" / "ravi", folder / "splits"]
    for place in places:
        if all((place / f"{p}.csv").is_file() for p in SPLITS):
            return place
    return None


def _inside(name: str) -> bool:
    """A relative name that stays inside images/: no root, no drive, no '..' (read with either separator)."""
    p = PureWindowsPath(name)
    return not (p.drive or p.root or ".." in p.parts)


def read_ravi_csv(path: Path) -> dict[str, list[str]]:
    """{wnid: [file names]} from a Ravi & Larochelle split file (header `filename,label`).

    The file is untrusted text: binary data, a name that is absolute or climbs out with '..' (it would read
    images from anywhere), or a malformed row is a DatasetNotFoundError naming the file and the line."""
    try:
        data = read_regular(path)
    except OSError as e:
        raise DatasetNotFoundError(f"{path}: cannot be read ({e})") from None
    nul = data.find(b"\x00")
    bad, why, text = (nul, "a NUL byte", "") if nul >= 0 else (None, "", "")
    if bad is None:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            bad, why = e.start, e.reason
    if bad is not None:
        line = data[:bad].count(b"\n") + 1
        raise DatasetNotFoundError(f"{path} line {line}: binary data ({why}), not a text CSV; expected Ravi & "
                                   "Larochelle's 'filename,label' rows")
    out: dict[str, list[str]] = {}
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["filename", "label"]:
            raise DatasetNotFoundError(f"{path} line 1: expected the header 'filename,label', found {header!r}")
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DatasetNotFoundError(f"{path} line {line}: expected 'filename,label', found {row!r}")
            name = row[0].strip()
            if not _inside(name):
                raise DatasetNotFoundError(f"{path} line {line}: {name!r} is not a file name inside images/ (absolute "
                                           "paths and '..' are refused); Ravi's CSVs hold plain names like "
                                           "n0153282900000005.jpg")
            out.setdefault(row[1].strip(), []).append(name)
    except csv.Error as e:
        raise DatasetNotFoundError(f"{path} line {reader.line_num}: not a CSV row ({e})") from None
    if not out:
        raise DatasetNotFoundError(f"{path}: no rows")
    return out


def miniimagenet_layout(root: str | os.PathLike,
                        csv_dir: str = "") -> tuple[Path, dict[str, dict[str, list[Path]]]]:
    """(dataset folder, {split: {wnid: [image paths]}}) in either layout; DatasetNotFoundError naming what is
    missing (every missing file a CSV lists is checked before any decoding)."""
    root = Path(root).expanduser()
    for sub in MINI_DIRS:
        folder = root / sub if sub else root
        if (folder / "images").is_dir():
            csvs = _find_csvs(folder, csv_dir)
            if csvs is None:
                where = csv_dir or f"{folder} or {folder / 'splits' / 'ravi'}"
                raise DatasetNotFoundError(f"found {folder / 'images'} but no train.csv, val.csv and test.csv in "
                                           f"{where}. {MINI_HELP}")
            parts, seen, missing = {}, {}, []
            for p in SPLITS:
                table = read_ravi_csv(csvs / f"{p}.csv")
                parts[p] = {}
                for wnid, names in table.items():
                    if wnid in seen:
                        raise DatasetNotFoundError(f"class {wnid} is in both {seen[wnid]}.csv and {p}.csv ({csvs})")
                    seen[wnid] = p
                    paths = [folder / "images" / n for n in names]
                    missing += [(p, n, f.exists()) for n, f in zip(names, paths) if not f.is_file()]
                    parts[p][wnid] = paths
            if missing:  # a FIFO or a folder in an image's place counts too: it is named as not a regular file
                shown = ", ".join(f"images/{n} ({p}.csv{'; not a regular file' if odd else ''})"
                                  for p, n, odd in missing[:3])
                raise DatasetNotFoundError(f"{len(missing)} image(s) listed in the CSVs are missing from "
                                           f"{folder / 'images'}: {shown}" + (", ..." if len(missing) > 3 else ""))
            return folder, parts
        if all((folder / p).is_dir() for p in SPLITS):
            parts = {}
            for p in SPLITS:
                parts[p] = {d.name: image_files(d) for d in sorted((folder / p).iterdir()) if d.is_dir()
                            and not d.name.startswith(".")}
                empty = [w for w, fs in parts[p].items() if not fs]
                if empty:
                    raise DatasetNotFoundError(f"{folder / p / empty[0]}: a class folder with no images "
                                               f"({len(empty)} such in {folder / p})")
                if not parts[p]:
                    raise DatasetNotFoundError(f"{folder / p}: no class folders. {MINI_HELP}")
            return folder, parts
    raise DatasetNotFoundError(f"no miniImageNet under {root}. {MINI_HELP}")


def load_miniimagenet(root: str | os.PathLike, split: str = "ravi", download: bool = False,
                      **options: Any) -> dict[str, FewShotSplit]:
    """miniImageNet's train / val / test (+ trainval) splits, Ravi & Larochelle's (64 / 16 / 20 classes).

    The paper's own split (80 training / 20 test classes, its appendix B) was never published as a file list
    of images, so Ravi's, which every later paper uses, is the standard here.
    """
    opts = check_options("miniimagenet", options, MINI_OPTIONS)
    if split != "ravi":
        raise ValueError(f"unknown miniImageNet split {split!r}; choose 'ravi' (the paper's own 80/20 split was "
                         "never published as a file list)")
    if download:
        raise DatasetNotFoundError(f"miniImageNet cannot be downloaded by matchnet. {MINI_HELP}")
    folder, parts = miniimagenet_layout(root, opts["csv_dir"])
    classes = {w: fs for p in SPLITS for w, fs in parts[p].items()}
    data = load_classes(classes, folder, "miniimagenet", opts)
    return make_splits(data, {p: list(parts[p]) for p in SPLITS})
