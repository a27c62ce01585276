"""Omniglot (Lake et al., 2015) read from its standard folder layout (or its two zips), cached as one tensor.

Layout, as torchvision and brendenlake/omniglot ship it:
    ROOT/omniglot-py/images_background/<Alphabet>/characterNN/IIII_DD.png   (964 characters)
    ROOT/omniglot-py/images_evaluation/<Alphabet>/characterNN/IIII_DD.png   (659 characters)
Each character has 20 drawings (DD = drawer 01..20). `images_background.zip` / `images_evaluation.zip` in
ROOT/omniglot-py/ are read directly when the folders are absent. torchvision's Omniglot class is not used:
it checks the zips' md5 and rejects re-encoded copies with identical pixels.
"""
from __future__ import annotations

import contextlib
import functools
import http.client
import io
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..atomic import atomic_path
from .cache import listing_key, load_cached, save_cached
from .fewshot import FewShotSplit
from .files import CorruptDataError, DatasetNotFoundError, NotRegularFileError, read_regular

PARTS = ("images_background", "images_evaluation")
COUNTS = {"images_background": 964, "images_evaluation": 659}
DRAWINGS = 20
URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{part}.zip"
TIMEOUT_S = 30.0  # per network read: a stalled download is an error, not a hang
SPLITS_DIR = Path(__file__).parent / "splits"
CACHE_VERSION = 2  # 2: keyed on the source listing (names, sizes, mtimes)
_PNG = re.compile(r"^(?:.*/)?(images_background|images_evaluation)/([^/]+)/(character\d+)/(\d+_\d+)\.png$")

LAYOUT_HELP = (
    "Expected the Omniglot folders ROOT/omniglot-py/images_background/<Alphabet>/characterNN/*.png and "
    "ROOT/omniglot-py/images_evaluation/... (or the two zips images_background.zip and "
    "images_evaluation.zip in ROOT/omniglot-py/). Unzip brendenlake/omniglot's python/*.zip there, or pass "
    "download=True (on the command line: --set download=true) to fetch them."
)


@dataclass
class Omniglot:
    """All 1623 characters: images uint8 [1623, 20, S, S] with ink = 255; names "Alphabet/characterNN"."""

    images: torch.Tensor
    names: list[str]
    background: torch.Tensor  # bool [1623]: True for images_background characters

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


def omniglot_dir(root: str | os.PathLike) -> Path:
    """ROOT may be omniglot-py itself, the folder holding omniglot-py/ (the README's data/omniglot-py), or a
    data root holding omniglot/omniglot-py/ (the layout of a data root with one folder per dataset). Where
    neither exists, ROOT/omniglot-py: where a download goes and what the error message names."""
    root = Path(root).expanduser()
    if root.name == "omniglot-py":
        return root
    nested = root / "omniglot" / "omniglot-py"
    return nested if not (root / "omniglot-py").exists() and nested.is_dir() else root / "omniglot-py"


# -- download --------------------------------------------------------------------------------------------------

def download_omniglot(root: str | os.PathLike, timeout: float = TIMEOUT_S) -> None:
    """Fetch the missing zips from brendenlake/omniglot (the canonical source) into ROOT/omniglot-py/.

    Each zip is streamed to a temporary file (matchnet.atomic), checked to be a zip, then renamed: a failed or
    interrupted download leaves nothing behind (not even the folders it created) and raises DatasetNotFoundError
    in one line."""
    folder = omniglot_dir(root)
    needed = [p for p in PARTS if not (folder / f"{p}.zip").exists() and not (folder / p).is_dir()]
    if not needed:
        return
    created = [d for d in (folder.parent, folder) if not d.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for part in needed:
            _fetch(URL.format(part=part), folder / f"{part}.zip", timeout)
    except BaseException:
        for d in reversed(created):  # an empty data/omniglot-py/ would look like data that is there
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


BY_HAND = "images_background.zip and images_evaluation.zip from brendenlake/omniglot (python/)"


def _fetch(url: str, target: Path, timeout: float = TIMEOUT_S, by_hand: str = BY_HAND) -> None:
    """Stream url to target (a zip); by_hand: what the error tells an offline user to copy there."""
    try:
        with atomic_path(target) as tmp:  # removed on any failure; renamed onto target only once it is a zip
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
            if not zipfile.is_zipfile(tmp):
                raise CorruptDataError(f"{url}: the download is not a zip archive; download it by hand into "
                                       f"{target.parent}")
    except DatasetNotFoundError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # TimeoutError is an OSError
        reason = str(getattr(e, "reason", None) or e).strip().splitlines() or ["no detail"]
        raise DatasetNotFoundError(
            f"could not download {url} ({type(e).__name__}: {reason[0][:200]}); without network, copy "
            f"{by_hand} into {target.parent} by hand") from None


# -- reading ---------------------------------------------------------------------------------------------------

def _sources(folder: Path, part: str) -> list[Path]:
    """The files a part is read from: its PNGs when the folder is there, else its zip, else nothing."""
    if (folder / part).is_dir():
        return sorted((folder / part).glob("*/character*/*.png"))
    return [folder / f"{part}.zip"] if (folder / f"{part}.zip").is_file() else []


@contextlib.contextmanager
def _entries(folder: Path, part: str) -> Iterator[dict[tuple[str, str, str], tuple[str, Callable[[], bytes]]]]:
    """(alphabet, character, file stem) -> (the file's name for messages, a function returning its bytes)."""
    if (folder / part).is_dir():
        yield {(p.parent.parent.name, p.parent.name, p.stem): (str(p), functools.partial(read_regular, p))
               for p in _sources(folder, part)}
        return
    path = folder / f"{part}.zip"
    if not path.is_file():
        yield {}
        return
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptDataError(
            f"{path}: not a readable zip archive ({type(e).__name__}: {e}); it is probably truncated (an interrupted "
            f"download or copy): delete it and download it again (--set download=true), or replace it with "
            f"brendenlake/omniglot's python/{part}.zip") from None
    with zf:
        entries = {}
        for name in zf.namelist():
            m = _PNG.match(name)
            if m and m.group(1) == part:
                entries[(m.group(2), m.group(3), m.group(4))] = (f"{path}:{name}", lambda n=name: zf.read(n))
        yield entries


def _to_array(png: bytes, size: int, label: str = "image") -> np.ndarray:
    """PNG bytes -> uint8 [size, size], ink = 255 (also the demo's reference pipeline); label names the file."""
    try:
        img = Image.open(io.BytesIO(png)).convert("L")  # convert() decodes, so a truncated file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        why = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise CorruptDataError(f"{label}: corrupt PNG ({why}); replace it with the original from "
                               "brendenlake/omniglot") from None
    if img.size != (size, size):
        img = img.resize((size, size), Image.LANCZOS)
    return 255 - np.asarray(img, dtype=np.uint8)  # ink = 255, paper = 0: zero padding matches paper


def _read_bytes(label: str, read: Callable[[], bytes]) -> bytes:
    try:
        return read()
    except NotRegularFileError:  # a FIFO in a PNG's place would block read() forever: refused, never waited on
        raise CorruptDataError(f"{label}: not a regular file (a FIFO, device or socket); replace it with the PNG "
                               "from brendenlake/omniglot") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # a damaged member: bad CRC, short data
        raise CorruptDataError(f"{label}: unreadable ({type(e).__name__}: {e}); the zip is damaged: delete it "
                               "and download it again (--set download=true)") from None


def _check_drawings(folder: Path, part: str, chars: dict[str, list]) -> None:
    """Every character has drawers 01..20; otherwise name the characters and the drawings that are missing."""
    bad = []
    for name in sorted(chars):
        drawers = {int(stem.split("_")[1]) for stem, _ in chars[name]}
        if len(chars[name]) != DRAWINGS or drawers != set(range(1, DRAWINGS + 1)):
            missing = sorted(set(range(1, DRAWINGS + 1)) - drawers)
            what = f"missing drawing(s) {', '.join(f'{d:02d}' for d in missing)}" if missing else "extra drawings"
            bad.append(f"{name} has {len(chars[name])} ({what})")
    if bad:
        where = folder / part if (folder / part).is_dir() else folder / f"{part}.zip"
        more = f" and {len(bad) - 3} more characters" if len(bad) > 3 else ""
        raise DatasetNotFoundError(
            f"{where}: want {DRAWINGS} drawings per character, but {'; '.join(bad[:3])}{more}; restore them from "
            f"brendenlake/omniglot's python/{part}.zip")


def _read(folder: Path, size: int, strict: bool) -> Omniglot:
    images, names, background = [], [], []
    for part in PARTS:
        with _entries(folder, part) as entries:
            chars: dict[str, list] = {}
            for (alpha, character, stem), (label, read) in entries.items():
                chars.setdefault(f"{alpha}/{character}", []).append((stem, (label, read)))
            if (len(chars) != COUNTS[part]) if strict else not chars:
                found = f"{len(chars)} characters" if chars else "nothing"
                raise DatasetNotFoundError(
                    f"Omniglot {part} under {folder} is missing or incomplete (found {found}; want "
                    f"{COUNTS[part]} characters x {DRAWINGS} drawings). {LAYOUT_HELP}")
            _check_drawings(folder, part, chars)
            for name in tqdm(sorted(chars), desc=f"reading {part}", unit="char", leave=False):
                drawings = sorted(chars[name], key=lambda e: int(e[0].split("_")[1]))  # by drawer number
                images.append(np.stack([_to_array(_read_bytes(*src), size, src[0]) for _, src in drawings]))
                names.append(name)
                background.append(part == "images_background")
    return Omniglot(torch.from_numpy(np.stack(images)), names, torch.tensor(background))


def load_omniglot(root: str | os.PathLike, image_size: int = 28, download: bool = False,
                  cache: bool = True, strict: bool = True) -> Omniglot:
    """Read Omniglot once, resize to image_size (Lanczos) and cache the tensor (matchnet.data.cache).

    The cache (omniglot-py/matchnet_cache_<size>.safetensors, or under $MATCHNET_CACHE / ~/.cache/matchnet when
    the data folder is read-only or full) is keyed on the source files' names, sizes and mtimes: a replaced or
    corrupted file makes it stale and it is rebuilt. It is a cache, not a copy: the source files must stay.
    strict=False accepts any number of characters per part (a subset or a test fixture), still 20 drawings each.
    """
    folder = omniglot_dir(root)
    if download:
        download_omniglot(root)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"No Omniglot data folder at {folder}. {LAYOUT_HELP}")
    name = f"matchnet_cache_{image_size}.safetensors"
    sources = [p for part in PARTS for p in _sources(folder, part)]
    key = listing_key(sources, base=folder, extra={"version": CACHE_VERSION, "image_size": image_size})
    if cache and sources:
        hit = load_cached(folder, name, key)
        if hit is not None:
            tensors, meta = hit
            data = Omniglot(tensors["images"], list(meta["names"]), tensors["background"])
            complete = len(data.names) == sum(COUNTS.values()) and int(data.background.sum()) == COUNTS[PARTS[0]]
            if complete or not strict:
                return data
    data = _read(folder, image_size, strict)
    if cache:
        save_cached(folder, name, key, {"images": data.images, "background": data.background},
                    {"names": data.names})
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


# -- Lake's protocol with whole alphabets held out (matchnet.alphabets draws its episodes) -----------------------

# Lake et al.'s benchmark: 20-way 1-shot, one query per class (the query drawer's drawing of each character).
LAKE_WAY = 20


def alphabet(name: str) -> str:
    """The alphabet of a class name "Alphabet/characterNN[/rotDDD]"."""
    return name.split("/", 1)[0]


def alphabet_splits(data: Omniglot, val_alphabets: int = 5, seed: int = 0,
                    min_characters: int = LAKE_WAY) -> dict[str, FewShotSplit]:
    """Lake's protocol with whole alphabets held out for choosing: `val_alphabets` of the images_background
    alphabets that have >= `min_characters` characters, drawn with `seed`, are validation (upright characters,
    as the test); the other background alphabets train (x4 rotations, as the lake split). trainval (all of
    images_background x4) and test (images_evaluation, upright) are the lake split's."""
    back = [i for i in range(len(data.names)) if data.background[i]]
    counts = Counter(alphabet(data.names[i]) for i in back)
    candidates = sorted(a for a, n in counts.items() if n >= min_characters)
    if val_alphabets > len(candidates) or val_alphabets < 1:
        raise ValueError(f"val_alphabets must be 1..{len(candidates)} (background alphabets with "
                         f">= {min_characters} characters), got {val_alphabets}")
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {candidates[i] for i in order[:val_alphabets]}
    train = [i for i in back if alphabet(data.names[i]) not in held]
    val = [i for i in back if alphabet(data.names[i]) in held]
    evaluation = [i for i in range(len(data.names)) if not data.background[i]]

    def make(src, rot, names):
        return FewShotSplit(data.images, torch.tensor(src), torch.tensor(rot), names)

    def as_drawn(indices):
        return make(indices, [0] * len(indices), [f"{data.names[i]}/rot000" for i in indices])

    def rotated(indices):  # each character at 0/90/180/270 degrees, as four classes
        return make([i for i in indices for _ in range(4)], [r for _ in indices for r in range(4)],
                    [f"{data.names[i]}/rot{90 * r:03d}" for i in indices for r in range(4)])

    return {"train": rotated(train), "val": as_drawn(val), "trainval": rotated(back), "test": as_drawn(evaluation)}
