"""ILSVRC-2012 as people have it, streamed: 1.28 M JPEGs do not fit one uint8 array, so images are decoded
in DataLoader workers (PIL, with JPEG draft decoding, then torchvision transforms v2) and each rank reads its
own shard.

Layout under the data root (the ImageNet download, or Kaggle's ILSVRC/Data/CLS-LOC/ folder):
  train/<wnid>/*.JPEG
  val/<wnid>/*.JPEG                                    (already sorted into class folders), or
  val/*.JPEG + LOC_val_solution.csv                     (Kaggle; beside val/ or one or two folders up), or
  val/*.JPEG + ILSVRC2012_devkit_t12/data/{ILSVRC2012_validation_ground_truth.txt, meta.mat}  (needs scipy)

Streams are pure functions of (seed, rank, position): the sample a rank takes at position p is fixed, so a
resumed run continues exactly where it stopped, whatever the DataLoader had prefetched. The position is the
step the engine asks for (matchnet.engine.Shard.step), so the resume point needs nothing of the streams.
An unreadable image is skipped (a training batch is one image shorter, an episode takes the class's next
image) and named once on stderr, as matchnet's other loaders do.
"""
from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..episodes import Episodes

EXTENSIONS = {".jpeg", ".jpg", ".png"}
WNID = re.compile(r"^n\d{8}$")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's ImageNet statistics


class ImageNetError(ValueError):
    """Data that cannot be used; the message names the folder or file and what to do."""


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


# -- finding the files ------------------------------------------------------------------------------------

def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))


def train_files(root: str | Path) -> dict[str, list[Path]]:
    """{wnid: image files} of root/train/."""
    folder = Path(root) / "train"
    if not folder.is_dir():
        raise ImageNetError(f"no ImageNet train folder at {folder}: expected {folder}/<wnid>/*.JPEG "
                            "(pass --data-root, the folder holding train/ and val/)")
    classes = {d.name: _images(d) for d in sorted(folder.iterdir()) if d.is_dir() and WNID.match(d.name)}
    if not classes:
        raise ImageNetError(f"{folder}: no <wnid> class folders (like n01440764/) inside")
    return classes


def val_files(root: str | Path) -> dict[str, list[Path]]:
    """{wnid: image files} of root/val/, in whichever of the three layouts it is."""
    root = Path(root)
    folder = root / "val"
    if not folder.is_dir():
        raise ImageNetError(f"no ImageNet val folder at {folder}")
    sub = [d for d in sorted(folder.iterdir()) if d.is_dir() and WNID.match(d.name)]
    if sub:
        return {d.name: _images(d) for d in sub}
    files = _images(folder)
    labels = flat_val_labels(root)
    out: dict[str, list[Path]] = {}
    unlabelled = [f.name for f in files if f.stem not in labels]
    if unlabelled:
        note(f"{folder}: {len(unlabelled)} image(s) have no label and are left out, e.g. {unlabelled[0]}")
    for f in files:
        if f.stem in labels:
            out.setdefault(labels[f.stem], []).append(f)
    return dict(sorted(out.items()))


def flat_val_labels(root: Path) -> dict[str, str]:
    """{image stem: wnid} for a flat val/ folder, from LOC_val_solution.csv or the devkit's ground truth."""
    for base in (root, root.parent, root.parent.parent, root.parent.parent.parent):
        if (base / "LOC_val_solution.csv").is_file():
            return loc_val_labels(base / "LOC_val_solution.csv")
    for base in (root, root.parent):
        devkit = base / "ILSVRC2012_devkit_t12" / "data"
        if (devkit / "ILSVRC2012_validation_ground_truth.txt").is_file():
            return devkit_val_labels(devkit / "ILSVRC2012_validation_ground_truth.txt",
                                     devkit_wnids(devkit / "meta.mat"))
    raise ImageNetError(f"{root / 'val'} holds images but no <wnid>/ folders, and no labels were found: put "
                        "LOC_val_solution.csv beside val/, or the devkit (ILSVRC2012_devkit_t12/) in the data root")


def loc_val_labels(path: Path) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv: ImageId, then boxes whose first word is the image's wnid."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:2] != ["ImageId", "PredictionString"]:
        raise ImageNetError(f"{path}: expected the header ImageId,PredictionString")
    out = {}
    for n, row in enumerate(rows[1:], 2):
        words = row[1].split() if len(row) > 1 else []
        if not words or not WNID.match(words[0]):
            raise ImageNetError(f"{path}: line {n} has no wnid after the image id")
        out[row[0]] = words[0]
    return out


def devkit_wnids(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid from the devkit's meta.mat (a MATLAB file: read with scipy, when installed)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImageNetError(f"{meta}: reading the devkit's labels needs scipy (pip install scipy), or use "
                            "LOC_val_solution.csv or val/<wnid>/ folders") from None
    synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
    return {int(s[0]): str(s[1]) for s in synsets if int(s[4]) == 0}  # num_children 0: the 1,000 classes


def devkit_val_labels(truth: Path, wnids: dict[int, str]) -> dict[str, str]:
    """ILSVRC2012_validation_ground_truth.txt: line i is the class id of ILSVRC2012_val_<i, 8 digits>."""
    out = {}
    for i, line in enumerate(truth.read_text().split(), 1):
        if int(line) not in wnids:
            raise ImageNetError(f"{truth}: line {i}: class id {line} is not in meta.mat's 1,000 classes")
        out[f"ILSVRC2012_val_{i:08d}"] = wnids[int(line)]
    return out


def select(files: dict[str, list[Path]], classes: list[str], where: str) -> dict[str, list[Path]]:
    """The listed classes' files; a class with no folder or no images is one clear error."""
    missing = [c for c in classes if not files.get(c)]
    if missing:
        raise ImageNetError(f"{where}: {len(missing)} of the {len(classes)} classes needed have no images "
                            f"(e.g. {missing[0]}); is this the full ILSVRC-2012 {where.rsplit('/', 1)[-1]}/ folder?")
    return {c: files[c] for c in classes}


def holdout(files: dict[str, list[Path]], per_class: int) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """(training files, validation files): the last `per_class` images of each class (in name order) are kept
    out of training to choose checkpoints on; the test images (val/) are never used for that."""
    train = {c: fs[:-per_class] for c, fs in files.items()}
    val = {c: fs[-per_class:] for c, fs in files.items()}
    short = [c for c, fs in train.items() if len(fs) < 2]
    if short:
        raise ImageNetError(f"class {short[0]} has too few images to hold {per_class} out for validation")
    return train, val


# -- decoding ---------------------------------------------------------------------------------------------

def transforms(size: int, train: bool):
    """torchvision's reference preset: RandomResizedCrop + flip for training; resize to size/0.875, centre crop."""
    from torchvision.transforms import v2

    first = ([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()] if train else
             [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)])
    return v2.Compose([v2.ToImage(), *first, v2.ToDtype(torch.float32, scale=True)])


def decode(path: Path, size: int, transform, seed: int | None = None) -> tuple[torch.Tensor | None, str]:
    """(float [3, size, size] in [0, 1], "") or (None, the error). Never raises on a bad file.

    seed: the random crop and flip are drawn from it (a stream's images are then a function of its position,
    whichever worker decodes them); the process's own random state is left as it was."""
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":  # decode at a reduced scale when the file is much larger: far faster
                img.draft("RGB", (size * 2, size * 2))
            img = img.convert("RGB")
        if seed is None:
            return transform(img), ""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return transform(img), ""
    except Exception as e:  # noqa: BLE001 -- an unreadable file is skipped and named, never fatal
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


class Reported:
    """Names each skipped file once (workers report through the batches they return)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, skipped: list[tuple[str, str]]) -> None:
        for path, error in skipped:
            if path not in self.seen:
                self.seen.add(path)
                note(f"skipped an unreadable image: {path}: {error}")


@dataclass
class LabelledFiles(Dataset):
    """(image, label) for a list of files; label = the class's index in `classes`."""

    items: list[tuple[Path, int]]
    size: int
    train: bool

    def __post_init__(self) -> None:
        self.transform = transforms(self.size, self.train)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor | None, int, str, str]:
        """key: an index, or (index, draw): a training stream's draw number seeds the augmentation."""
        i, draw = key if isinstance(key, tuple) else (key, None)
        path, label = self.items[i]
        image, error = decode(path, self.size, self.transform, None if draw is None else draw * 7_919 + 17)
        return image, label, str(path), error


def labelled(files: dict[str, list[Path]], classes: list[str]) -> list[tuple[Path, int]]:
    index = {c: i for i, c in enumerate(classes)}
    return [(f, index[c]) for c in classes for f in files[c]]


def collate_images(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    good = [(img, label) for img, label, _, _ in batch if img is not None]
    skipped = [(path, error) for img, _, path, error in batch if img is None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), skipped


class ShardSampler(Sampler[int]):
    """Endless indices: epoch e is a permutation seeded by (seed, e); rank r of w takes every w-th index from
    r (DistributedSampler's sharding, without its padding: the stream simply runs on into the next epoch).
    Starts at this rank's position `start`. With draws=True it yields (index, global draw number) pairs."""

    def __init__(self, n: int, seed: int, rank: int, world: int, start: int = 0, draws: bool = False):
        self.n, self.seed, self.rank, self.world, self.start, self.draws = n, seed, rank, world, start, draws

    def __iter__(self) -> Iterator[int]:
        g = self.start * self.world + self.rank  # global position of this rank's next sample
        epoch, perm = -1, None
        while True:
            if g // self.n != epoch:
                epoch = g // self.n
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            index = int(perm[g % self.n])
            yield (index, self.seed * 1_000_003 + g) if self.draws else index
            g += self.world


def loader(dataset: Dataset, batch: int, sampler: Sampler | None, workers: int, collate, device: torch.device,
           shuffle: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, sampler=sampler, shuffle=shuffle, num_workers=workers,
                      collate_fn=collate, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None)


class ImageStream:
    """This rank's endless stream of training batches (images [B, 3, S, S] in [0, 1], labels [B])."""

    def __init__(self, files: dict[str, list[Path]], classes: list[str], size: int, batch: int, seed: int,
                 rank: int, world: int, workers: int, device: torch.device):
        self.data = LabelledFiles(labelled(files, classes), size, train=True)
        self.batch, self.seed, self.rank, self.world, self.workers = batch, seed, rank, world, workers
        self.device = device
        self.report = Reported()
        self._iter, self._at = None, -1

    def next(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's batch of training step `step` (0-based): a function of (seed, rank, world, step)."""
        if self._iter is None or self._at != step:
            sampler = ShardSampler(len(self.data), self.seed, self.rank, self.world, start=step * self.batch,
                                   draws=True)
            self._iter = iter(loader(self.data, self.batch, sampler, self.workers, collate_images, self.device))
        images, labels, skipped = next(self._iter)
        self.report(skipped)
        self._at = step + 1
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


# -- episodes over class folders --------------------------------------------------------------------------

@dataclass
class EpisodeFiles(Dataset):
    """Episode number i: `way` classes and `shot + query` images of each, drawn by a generator seeded with
    (seed, i), decoded in whichever worker takes it. Labels 0..way-1 in draw order, support first (as
    matchnet.episodes)."""

    files: dict[str, list[Path]]
    way: int
    shot: int
    query: int
    size: int
    seed: int
    train: bool = True

    def __post_init__(self) -> None:
        self.classes = list(self.files)
        self.transform = transforms(self.size, self.train)
        need = self.shot + self.query
        short = [c for c in self.classes if len(self.files[c]) < need]
        if short:
            raise ImageNetError(f"class {short[0]} has {len(self.files[short[0]])} images; episodes need {need}")
        if len(self.classes) < self.way:
            raise ImageNetError(f"{self.way}-way episodes need {self.way} classes; {len(self.classes)} given")

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        picked = torch.randperm(len(self.classes), generator=g)[:self.way].tolist()
        support, query, skipped = [], [], []
        for c in picked:
            files = self.files[self.classes[c]]
            order = torch.randperm(len(files), generator=g).tolist()
            images = []
            for j in order:  # the class's next image stands in for an unreadable one
                image, error = decode(files[j], self.size, self.transform,
                                      int(torch.randint(2 ** 62, (), generator=g)) if self.train else None)
                if image is None:
                    skipped.append((str(files[j]), error))
                    continue
                images.append(image)
                if len(images) == self.shot + self.query:
                    break
            if len(images) < self.shot + self.query:
                raise ImageNetError(f"class {self.classes[c]}: too few readable images for an episode")
            support += images[:self.shot]
            query += images[self.shot:]
        return torch.stack(support), torch.stack(query), torch.tensor(picked), skipped


def collate_episodes(batch: list) -> tuple[Episodes, list[tuple[str, str]]]:
    support = torch.stack([b[0] for b in batch])
    query = torch.stack([b[1] for b in batch])
    e, way = len(batch), batch[0][2].numel()
    shot, q = support.shape[1] // way, query.shape[1] // way
    labels = torch.arange(way)
    return Episodes(support, labels.repeat_interleave(shot).expand(e, -1).contiguous(), query,
                    labels.repeat_interleave(q).expand(e, -1).contiguous(), torch.stack([b[2] for b in batch]),
                    way), [s for b in batch for s in b[3]]


class EpisodeStream:
    """This rank's endless training episodes, `per_step` per batch(): episode indices rank, rank + w, ..."""

    def __init__(self, files: dict[str, list[Path]], way: int, shot: int, query: int, size: int, per_step: int,
                 seed: int, rank: int, world: int, workers: int, device: torch.device):
        self.data = EpisodeFiles(files, way, shot, query, size, seed)
        self.per_step, self.rank, self.world, self.workers, self.device = per_step, rank, world, workers, device
        self.report = Reported()
        self._iter, self._at = None, -1

    def next(self, step: int) -> Episodes:
        """This rank's episodes of training step `step` (0-based): a function of (seed, rank, world, step)."""
        if self._iter is None or self._at != step:
            start = step * self.per_step
            indices = _Counter(start * self.world + self.rank, self.world)
            self._iter = iter(loader(self.data, self.per_step, indices, self.workers, collate_episodes, self.device))
        ep, skipped = next(self._iter)
        self.report(skipped)
        self._at = step + 1
        return to_device(ep, self.device)


class _Counter(Sampler[int]):
    def __init__(self, start: int, stride: int):
        self.start, self.stride = start, stride

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while True:
            yield i
            i += self.stride


def to_device(ep: Episodes, device: torch.device) -> Episodes:
    return Episodes(ep.support.to(device, non_blocking=True), ep.support_labels.to(device),
                    ep.query.to(device, non_blocking=True), ep.query_labels.to(device), ep.classes, ep.n_way)
