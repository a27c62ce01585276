"""Natural images: miniImageNet (two layouts) and any folder of class images, decoded once into one uint8 tensor.

Layouts (ROOT is the data root; the dataset folder is ROOT itself or ROOT/miniimagenet, ROOT/miniImagenet, ...):
  miniImageNet, Ravi & Larochelle's files:  DIR/images/*.jpg + train.csv, val.csv, test.csv (`filename,label`),
      the CSVs in DIR, DIR/splits/ravi/ or the folder given as data option csv_dir
  miniImageNet, class folders:              DIR/{train,val,test}/<wnid>/*.jpg
  any image folder (dataset "folder"):      ROOT/<class>/*.{jpg,jpeg,png,...}; classes split into train/val/test
      by given class lists (split "lists") or by a seeded proportion (split "random")

Every image is decoded once (in parallel processes), converted to RGB, resized to image_size x image_size and
stored in one uint8 array [images, 3, S, S] on disk (.npy, 60,000 x 3 x 84 x 84 = 1.27 GB for miniImageNet),
memory-mapped on load; FewShotSplit.to("cuda") then holds it on the GPU. The cache is keyed on the files'
names, sizes and modification times (matchnet.data.cache.listing_key). A corrupt image is skipped and counted,
never an exception halfway through the decode; non-RGB images (grayscale, CMYK, palette) are converted and
counted. Per-channel mean/std come from the training classes only and travel with every split.
"""
from __future__ import annotations

import csv
import multiprocessing
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .cache import cache_paths, listing_key, load_cached, save_cached
from .fewshot import FewShotSplit
from .omniglot import DatasetNotFoundError

CACHE_VERSION = 1
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
MINI_DIRS = ("", "miniimagenet", "miniImagenet", "miniImageNet", "mini-imagenet", "mini_imagenet")
SPLITS = ("train", "val", "test")

MINI_HELP = (
    "Expected miniImageNet in one of two layouts under the data root (or its miniimagenet/ folder): "
    "(a) Ravi & Larochelle's images/*.jpg with train.csv, val.csv, test.csv (`filename,label`; the CSVs may also "
    "sit in splits/ravi/ or in the folder given by data option csv_dir), or (b) class folders "
    "{train,val,test}/<wnid>/*.jpg. matchnet cannot download miniImageNet (ImageNet's terms of access); "
    "Ravi's split CSVs are twitter/meta-learning-lstm's data/miniImagenet/{train,val,test}.csv."
)

# data options: name -> (type(s), default). Shared by both datasets; each dataset adds its own.
COMMON_OPTIONS: dict[str, tuple[tuple[type, ...], Any]] = {
    "image_size": ((int,), 84),  # side of the square images the model sees
    "resize": ((str,), "stretch"),  # stretch (as miniImageNet was made) | crop (shorter side, then centre crop)
    "per_class": ((int,), 0),  # images per class; 0 = the smallest class's count (classes with fewer are left out)
    "seed": ((int,), 0),  # which images a capped class keeps, and the "random" split of a folder
    "workers": ((int,), 0),  # decoding processes; 0 = one per CPU, 1 = in this process
    "cache": ((bool,), True),
    "progress": ((bool,), True),
}
MINI_OPTIONS = {**COMMON_OPTIONS, "csv_dir": ((str,), "")}
FOLDER_OPTIONS = {**COMMON_OPTIONS, "proportions": ((list,), [0.64, 0.16, 0.20]),
                  "train_classes": ((list, str), None), "val_classes": ((list, str), None),
                  "test_classes": ((list, str), None)}


def check_options(dataset: str, options: dict[str, Any], spec: dict[str, tuple[tuple[type, ...], Any]]) -> dict:
    """The options with defaults filled in; an unknown key or a wrong type is a ValueError naming it."""
    unknown = sorted(set(options) - set(spec))
    if unknown:
        raise ValueError(f"unknown data option(s) {unknown} for dataset {dataset!r}; known: {sorted(spec)}")
    out = {}
    for key, (types, default) in spec.items():
        value = options.get(key, default)
        if key in options and not (isinstance(value, types) and not (isinstance(value, bool) and bool not in types)):
            names = " or ".join(t.__name__ for t in types)
            raise ValueError(f"data option {key} should be {names}, got {value!r}")
        out[key] = value
    if out["image_size"] < 8:
        raise ValueError(f"data option image_size should be at least 8, got {out['image_size']}")
    if out["resize"] not in ("stretch", "crop"):
        raise ValueError(f"data option resize should be 'stretch' or 'crop', got {out['resize']!r}")
    if out["per_class"] < 0 or out["workers"] < 0:
        raise ValueError("data options per_class and workers cannot be negative")
    return out


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


# -- decoding ------------------------------------------------------------------------------------------------

def decode_image(path: str, size: int, resize: str) -> tuple[np.ndarray | None, str, str]:
    """(uint8 [3, size, size] or None, the error if unreadable, the file's mode). Never raises."""
    try:
        with Image.open(path) as img:
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


def _decode_job(job: tuple[str, int, str]) -> tuple[np.ndarray | None, str, str]:
    return decode_image(*job)


@dataclass
class Decoded:
    """Every listed file, decoded: images uint8 [N, 3, S, S] (memory-mapped when cached), per-image channel
    sums of x and x^2 (x in [0, 1]; float64 [N, 2, 3]), ok = False for a file that could not be read."""

    images: np.ndarray
    sums: np.ndarray
    ok: np.ndarray
    skipped: list[list[str]]  # [file, error]
    converted: dict[str, int]  # mode -> count of non-RGB images converted to RGB


def decode_files(files: list[Path], base: Path, cache_root: Path, tag: str, key_extra: dict, opts: dict) -> Decoded:
    """Decode `files` (or read the cache made from exactly these files) into one uint8 array."""
    size, resize = opts["image_size"], opts["resize"]
    name = f"matchnet_cache_{tag}_{size}{'_crop' if resize == 'crop' else ''}"
    key = listing_key(files, base=base, extra={"version": CACHE_VERSION, "size": size, "resize": resize,
                                               **key_extra}) if opts["cache"] else ""
    if opts["cache"]:
        hit = load_cached(cache_root, name + ".safetensors", key)
        if hit is not None:
            tensors, meta = hit
            try:
                images = np.load(meta["npy"], mmap_mode="c", allow_pickle=False)  # copy-on-write: never writes back
                if images.shape == (len(files), 3, size, size) and images.dtype == np.uint8:
                    decoded = Decoded(images, tensors["sums"].numpy(), tensors["ok"].numpy(), meta["skipped"],
                                      meta["converted"])
                    report(decoded, tag, from_cache=True)
                    return decoded
            except (OSError, ValueError, KeyError, TypeError):
                pass  # the big file went missing or is damaged: decode again
    npy = _open_output(cache_root, f"{name}.{key[:16]}.npy", (len(files), 3, size, size)) if opts["cache"] else None
    images = npy[1] if npy else np.empty((len(files), 3, size, size), dtype=np.uint8)
    sums = np.zeros((len(files), 2, 3), dtype=np.float64)
    ok = np.zeros(len(files), dtype=bool)
    skipped, converted = [], {}
    jobs = [(str(f), size, resize) for f in files]
    workers = opts["workers"] or (os.cpu_count() or 1)
    workers = 1 if len(files) < 64 else min(workers, len(files) // 16 or 1)
    desc = f"decoding {tag} ({len(files):,} images, {workers} process{'es' if workers > 1 else ''})"
    pool = multiprocessing.get_context().Pool(workers) if workers > 1 else None
    try:
        with tqdm(total=len(files), desc=desc, unit="img", disable=not opts["progress"]) as bar:
            results = pool.imap(_decode_job, jobs, chunksize=32) if pool else map(_decode_job, jobs)
            for i, (array, error, mode) in enumerate(results):
                if array is None:
                    rel = files[i].relative_to(base) if files[i].is_relative_to(base) else files[i]
                    skipped.append([str(rel), error])
                else:
                    images[i] = array
                    x = array.reshape(3, -1).astype(np.float64) / 255
                    sums[i, 0], sums[i, 1] = x.sum(1), (x * x).sum(1)
                    ok[i] = True
                    if mode != "RGB":
                        converted[mode] = converted.get(mode, 0) + 1
                bar.update(1)
    except BaseException:  # interrupted (Ctrl-C) or a worker died: no half-written cache is left behind
        if npy:
            _unlink(npy[0])
        raise
    finally:
        if pool:
            pool.terminate()
            pool.join()
    decoded = Decoded(images, sums, ok, skipped, converted)
    report(decoded, tag, from_cache=False)
    if npy:
        path = npy[0]
        images.flush()
        final = _finish_output(path)
        if final is not None:
            # The small file records the big one's absolute path: each may have gone beside the data or to
            # the user cache, independently.
            save_cached(cache_root, name + ".safetensors", key, {"sums": sums, "ok": torch.from_numpy(ok)},
                        {"npy": str(final.resolve()), "skipped": skipped, "converted": converted})
            decoded.images = np.load(final, mmap_mode="c", allow_pickle=False)
            _remove_stale(final)
    return decoded


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


def _open_output(cache_root: Path, name: str, shape: tuple[int, ...]) -> tuple[Path, np.memmap] | None:
    """A temporary .npy memory map in the first place that takes it (beside the data, else the user cache)."""
    for path in cache_paths(cache_root, name):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return tmp, np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        except OSError:
            _unlink(tmp)
            continue
    note(f"the decoded images could not be cached beside {cache_root} or in the user cache; kept in memory")
    return None


def _finish_output(tmp: Path) -> Path | None:
    """fsync, make readable by others (a shared data folder), and move the finished file into place atomically."""
    final = tmp.with_name(tmp.name[1:].rsplit(".", 2)[0])
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, final)
        return final
    except OSError as e:
        note(f"cache not written ({e}); the images are used from memory this time")
        _unlink(tmp)
        return None


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # cleaning up after a failed write must not hide the reason it failed
        pass


def _remove_stale(final: Path) -> None:
    """Older caches of the same dataset and size (other keys) are dead weight of a gigabyte or so: remove them."""
    stem = final.name.rsplit(".", 2)[0]
    for other in final.parent.glob(f"{stem}.*.npy"):
        if other != final:
            _unlink(other)


# -- classes -> a grid of images ------------------------------------------------------------------------------

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


# -- miniImageNet ---------------------------------------------------------------------------------------------

def _find_csvs(folder: Path, csv_dir: str) -> Path | None:
    places = [Path(csv_dir).expanduser()] if csv_dir else [folder, folder / "splits" / "ravi", folder / "splits"]
    for place in places:
        if all((place / f"{p}.csv").is_file() for p in SPLITS):
            return place
    return None


def read_ravi_csv(path: Path) -> dict[str, list[str]]:
    """{wnid: [file names]} from a Ravi & Larochelle split file (header `filename,label`)."""
    out: dict[str, list[str]] = {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["filename", "label"]:
            raise DatasetNotFoundError(f"{path}: expected the header 'filename,label', found {header!r}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DatasetNotFoundError(f"{path} line {line}: expected 'filename,label', found {row!r}")
            out.setdefault(row[1].strip(), []).append(row[0].strip())
    if not out:
        raise DatasetNotFoundError(f"{path}: no rows")
    return out


def miniimagenet_layout(root: str | os.PathLike, csv_dir: str = "") -> tuple[Path, dict[str, dict[str, list[Path]]]]:
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
                    missing += [(p, n) for n, f in zip(names, paths) if not f.is_file()]
                    parts[p][wnid] = paths
            if missing:
                shown = ", ".join(f"images/{n} ({p}.csv)" for p, n in missing[:3])
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


# -- any folder of class images -------------------------------------------------------------------------------

def image_files(folder: Path) -> list[Path]:
    """Image files under a class folder (any depth), sorted; hidden files and other extensions are ignored."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


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


LOADERS: dict[str, Callable[..., dict[str, FewShotSplit]]] = {
    "miniimagenet": load_miniimagenet, "folder": load_image_folder}

