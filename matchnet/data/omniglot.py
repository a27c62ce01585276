"""Omniglot (Lake et al., 2015) read from its standard folder layout (or its two zips), cached as one tensor.

Layout, as torchvision and brendenlake/omniglot ship it:
    ROOT/omniglot-py/images_background/<Alphabet>/characterNN/IIII_DD.png   (964 characters)
    ROOT/omniglot-py/images_evaluation/<Alphabet>/characterNN/IIII_DD.png   (659 characters)
Each character has 20 drawings (DD = drawer 01..20). `images_background.zip` / `images_evaluation.zip` in
ROOT/omniglot-py/ are read directly when the folders are absent. torchvision's Omniglot class is not used:
it checks the zips' md5 and rejects re-encoded copies with identical pixels.
"""
from __future__ import annotations

import io
import json
import os
import re
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .fewshot import FewShotSplit

PARTS = ("images_background", "images_evaluation")
COUNTS = {"images_background": 964, "images_evaluation": 659}
DRAWINGS = 20
URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{part}.zip"
SPLITS_DIR = Path(__file__).parent / "splits"
CACHE_VERSION = 1
_PNG = re.compile(r"^(?:.*/)?(images_background|images_evaluation)/([^/]+)/(character\d+)/(\d+_\d+)\.png$")

LAYOUT_HELP = (
    "Expected the Omniglot folders ROOT/omniglot-py/images_background/<Alphabet>/characterNN/*.png and "
    "ROOT/omniglot-py/images_evaluation/... (or the two zips images_background.zip and "
    "images_evaluation.zip in ROOT/omniglot-py/). Unzip brendenlake/omniglot's python/*.zip there, or pass "
    "download=True (--download) to fetch them."
)


class DatasetNotFoundError(FileNotFoundError):
    """The data folder is missing or incomplete; the message names the expected layout."""


@dataclass
class Omniglot:
    """All 1623 characters: images uint8 [1623, 20, S, S] with ink = 255; names "Alphabet/characterNN"."""

    images: torch.Tensor
    names: list[str]
    background: torch.Tensor  # bool [1623]: True for images_background characters

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


def omniglot_dir(root: str | os.PathLike) -> Path:
    """ROOT may be the folder holding omniglot-py/ or omniglot-py itself."""
    root = Path(root).expanduser()
    return root if root.name == "omniglot-py" else root / "omniglot-py"


def download_omniglot(root: str | os.PathLike) -> None:
    """Fetch the two zips from brendenlake/omniglot (the canonical source) into ROOT/omniglot-py/."""
    folder = omniglot_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        target = folder / f"{part}.zip"
        if not target.exists() and not (folder / part).is_dir():
            tmp = target.with_suffix(".part")
            urllib.request.urlretrieve(URL.format(part=part), tmp)
            tmp.rename(target)


def _list_part(folder: Path, part: str) -> dict[tuple[str, str, str], callable]:
    """Map (alphabet, character, file stem) -> a function returning the PNG bytes, from folder or zip."""
    entries = {}
    if (folder / part).is_dir():
        for png in (folder / part).glob("*/character*/*.png"):
            entries[(png.parent.parent.name, png.parent.name, png.stem)] = png.read_bytes
    elif (folder / f"{part}.zip").is_file():
        zf = zipfile.ZipFile(folder / f"{part}.zip")
        for name in zf.namelist():
            m = _PNG.match(name)
            if m and m.group(1) == part:
                entries[(m.group(2), m.group(3), m.group(4))] = (lambda n=name: zf.read(n))
    return entries


def _to_array(png: bytes, size: int) -> np.ndarray:
    img = Image.open(io.BytesIO(png)).convert("L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.LANCZOS)
    return 255 - np.asarray(img, dtype=np.uint8)  # ink = 255, paper = 0: zero padding matches paper


def _read(folder: Path, size: int, strict: bool) -> Omniglot:
    images, names, background = [], [], []
    for part in PARTS:
        entries = _list_part(folder, part)
        chars: dict[str, list] = {}
        for (alphabet, character, stem), read in entries.items():
            chars.setdefault(f"{alphabet}/{character}", []).append((stem, read))
        wrong_count = len(chars) != COUNTS[part] if strict else not chars
        if wrong_count or any(len(v) != DRAWINGS for v in chars.values()):
            found = f"{len(chars)} characters" if chars else "nothing"
            raise DatasetNotFoundError(
                f"Omniglot {part} under {folder} is missing or incomplete (found {found}; want "
                f"{COUNTS[part]} characters x {DRAWINGS} drawings). {LAYOUT_HELP}")
        for name in tqdm(sorted(chars), desc=f"reading {part}", unit="char", leave=False):
            drawings = sorted(chars[name], key=lambda e: int(e[0].split("_")[1]))  # by drawer number
            images.append(np.stack([_to_array(read(), size) for _, read in drawings]))
            names.append(name)
            background.append(part == "images_background")
    return Omniglot(torch.from_numpy(np.stack(images)), names, torch.tensor(background))


def load_omniglot(root: str | os.PathLike, image_size: int = 28, download: bool = False,
                  cache: bool = True, strict: bool = True) -> Omniglot:
    """Read Omniglot once, resize to image_size (Lanczos) and cache the tensor beside the data.

    The cache (omniglot-py/matchnet_cache_<size>.safetensors) is rebuilt if it is absent or stale; if the data
    folder is read-only it goes to ~/.cache/matchnet instead. strict=False accepts any number of characters
    per part (a subset or a test fixture), still 20 drawings each.
    """
    folder = omniglot_dir(root)
    name = f"matchnet_cache_{image_size}.safetensors"
    candidates = [folder / name, Path.home() / ".cache" / "matchnet" / f"omniglot_{image_size}.safetensors"]
    if cache:
        for path in candidates:
            if path.is_file():
                try:
                    tensors = load_file(path)
                    meta = json.loads(tensors.pop("_meta").numpy().tobytes().decode())
                    data = Omniglot(tensors["images"], meta["names"], tensors["background"])
                    complete = len(data.names) == sum(COUNTS.values()) and int(data.background.sum()) == COUNTS[PARTS[0]]
                    if (meta.get("version") == CACHE_VERSION and meta.get("source") == str(folder.resolve())
                            and data.images.shape[-1] == image_size and (complete or not strict)):
                        return data
                except Exception:  # a corrupt cache is rebuilt, never trusted
                    pass
    if download:
        download_omniglot(root)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"No Omniglot data folder at {folder}. {LAYOUT_HELP}")
    data = _read(folder, image_size, strict)
    if cache:
        meta = json.dumps({"version": CACHE_VERSION, "source": str(folder.resolve()), "names": data.names})
        tensors = {"images": data.images, "background": data.background,
                   "_meta": torch.frombuffer(bytearray(meta.encode()), dtype=torch.uint8)}
        for path in candidates:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_file(tensors, path)
                break
            except OSError:
                continue
    return data


def _all_rotations(indices: list[int], names: list[str]) -> tuple[list[int], list[int], list[str]]:
    src, rot, out = [], [], []
    for i in indices:
        for r in range(4):
            src.append(i), rot.append(r), out.append(f"{names[i]}/rot{90 * r:03d}")
    return src, rot, out


def read_split_file(path: Path, index: dict[str, int]) -> tuple[list[int], list[int], list[str]]:
    """Snell's format: one 'Alphabet/characterNN/rotDDD' per line."""
    src, rot, names = [], [], []
    for line in path.read_text().split():
        char, r = line.rsplit("/", 1)
        if char not in index:
            raise DatasetNotFoundError(f"{path.name} names {char}, which is not in the Omniglot data")
        src.append(index[char]), rot.append(int(r[3:]) // 90), names.append(line)
    return src, rot, names


def omniglot_splits(data: Omniglot, split: str = "vinyals") -> dict[str, FewShotSplit]:
    """The class lists of each split, sharing data.images.

    vinyals: Snell's files (train 1028 / val 172 / test 423 characters, x4 rotations each as new classes;
             the paper's 1200 training characters are train + val, exposed as "trainval").
    lake:    train on images_background (964 characters x4 rotations), with every 10th background character
             held out as val; test on images_evaluation's 659 characters as drawn (no rotation).
    """
    def make(src, rot, names):
        return FewShotSplit(data.images, torch.tensor(src), torch.tensor(rot), names)

    if split == "vinyals":
        index = data.index()
        parts = {p: read_split_file(SPLITS_DIR / "vinyals" / f"{p}.txt", index) for p in ("train", "val", "test")}
        out = {p: make(*v) for p, v in parts.items()}
        out["trainval"] = make(*(a + b for a, b in zip(parts["train"], parts["val"])))
        return out
    if split == "lake":
        back = [i for i in range(len(data.names)) if data.background[i]]
        evaluation = [i for i in range(len(data.names)) if not data.background[i]]
        val = back[9::10]
        train = [i for i in back if i not in set(val)]
        return {
            "train": make(*_all_rotations(train, data.names)),
            "val": make(*_all_rotations(val, data.names)),
            "trainval": make(*_all_rotations(back, data.names)),
            "test": make(evaluation, [0] * len(evaluation), [f"{data.names[i]}/rot000" for i in evaluation]),
        }
    raise ValueError(f"unknown Omniglot split {split!r}; choose 'vinyals' or 'lake'")
