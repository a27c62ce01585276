"""Lake et al. (2015)'s 20 one-shot classification runs: brendenlake/omniglot's
python/one-shot-classification/all_runs.zip, read as its zip or its unpacked folder.

Layout (as the zip ships it; an extra top folder such as all_runs/ is allowed):
    run01/class_labels.txt   one line per test item: "run01/test/itemNN.png run01/training/classMM.png" (the
                             test item and the training image of its class; "test/... training/..." also read)
    run01/training/*.png     the run's 20 training images, one per class (105 x 105, as Omniglot's)
    run01/test/*.png         its 20 test items
    ... run20/
Where it is looked for under a data root: all_runs.zip or all_runs/ in omniglot_dir(root) (e.g.
data/omniglot-py/all_runs.zip, where a download goes), then in ROOT/omniglot/, then in ROOT itself; a path to
the zip or to the folder itself is read as it is.
Images are decoded and resized exactly as the Omniglot loader does (matchnet.data.omniglot._to_array).
"""
from __future__ import annotations

import contextlib
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .files import CorruptDataError, DatasetNotFoundError, read_regular
from .omniglot import _fetch, _read_bytes, _to_array, omniglot_dir

URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/one-shot-classification/all_runs.zip"
NAME = "all_runs"
_MEMBER = re.compile(r"^(?:.*/)?(run\d+)/(class_labels\.txt|(?:training|test)/[^/]+\.png)$")
LAYOUT_HELP = (f"Expected brendenlake/omniglot's python/one-shot-classification/{NAME}.zip (folders run01 ... "
               f"run20, each with class_labels.txt, training/ and test/) at DATA_ROOT/omniglot-py/{NAME}.zip, or "
               f"unpacked as DATA_ROOT/omniglot-py/{NAME}/run01/...; or pass --set download=true to fetch it.")


@dataclass
class LakeRuns:
    """Every run as one 20-way 1-shot episode. Images uint8 [R, N, S, S], ink = 255; within a run the
    training images and the test items are each sorted by file name, as Lake's script sorts them."""

    names: list[str]  # "run01", ...
    training: torch.Tensor  # [R, N, S, S]: the N training images (one per class)
    test: torch.Tensor  # [R, N, S, S]: the N test items
    answers: torch.Tensor  # long [R, N]: for each test item, the index of its class's training image
    training_files: list[list[str]]
    test_files: list[list[str]]
    source: str  # the zip or folder read

    @property
    def items(self) -> int:
        return self.answers.numel()


def lake_runs_path(root: str | os.PathLike) -> Path:
    """The zip or folder to read: `root` itself when it is the zip or a folder holding run folders, else the
    first of all_runs.zip, all_runs/ in omniglot_dir(root), then ROOT/omniglot/, then ROOT itself; where none
    exists, omniglot_dir(root)/all_runs.zip (where a download goes and what the error names)."""
    root = Path(root).expanduser()
    if root.is_file() or (root.is_dir() and any(root.glob("run[0-9]*/class_labels.txt"))):
        return root
    folder = omniglot_dir(root)
    for place in (folder, root / "omniglot", root):  # beside Omniglot's zips first
        for candidate in (place / f"{NAME}.zip", place / NAME):
            if candidate.exists():
                return candidate
    return folder / f"{NAME}.zip"


def download_lake_runs(root: str | os.PathLike) -> Path:
    """Fetch all_runs.zip from brendenlake/omniglot into omniglot_dir(root) unless it (or its folder) is there;
    a failed download leaves nothing behind and raises DatasetNotFoundError in one line."""
    path = lake_runs_path(root)
    if path.exists():
        return path
    created = [d for d in (path.parent.parent, path.parent) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(URL, path, by_hand=f"python/one-shot-classification/{NAME}.zip from brendenlake/omniglot")
    except BaseException:
        for d in reversed(created):  # an empty omniglot-py/ would look like Omniglot that is there
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return path


def _members(path: Path) -> tuple[dict[tuple[str, str], tuple[str, Callable[[], bytes]]], zipfile.ZipFile | None]:
    """(run, "class_labels.txt" | "training/x.png" | "test/x.png") -> (a name for messages, its bytes' reader)."""
    if path.is_dir():
        out = {}
        for p in sorted(path.rglob("*")):
            m = _MEMBER.match(p.relative_to(path).as_posix())
            if m and p.is_file() and "__MACOSX" not in p.parts:
                out[(m.group(1), m.group(2))] = (str(p), lambda p=p: read_regular(p))
        return out, None
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptDataError(f"{path}: not a readable zip archive ({type(e).__name__}: {e}); delete it and "
                               f"download it again (--set download=true)") from None
    out = {}
    for name in zf.namelist():
        m = _MEMBER.match(name)
        if m and not name.startswith("__MACOSX"):
            out[(m.group(1), m.group(2))] = (f"{path}:{name}", lambda n=name: zf.read(n))
    return out, zf


def _parse_labels(run: str, label: str, text: str, files: set[str]) -> dict[str, str]:
    """class_labels.txt -> {test file: its training file}, paths relative to the run; a bad line is one
    CorruptDataError naming the file and the line."""
    pairs: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue

        def bad(why: str) -> CorruptDataError:
            return CorruptDataError(f"{label} line {number}: {why} (got {line.strip()[:120]!r}); want "
                                    f"'{run}/test/itemNN.png {run}/training/classMM.png': restore the file from "
                                    f"brendenlake/omniglot's {NAME}.zip")
        parts = line.split()
        if len(parts) != 2:
            raise bad(f"{len(parts)} fields, not 2")
        test, train = (p[len(run) + 1:] if p.startswith(run + "/") else p for p in parts)
        if not test.startswith("test/") or not train.startswith("training/"):
            raise bad("the first path must be a test item and the second a training image of this run")
        for f in (test, train):
            if f not in files:
                raise bad(f"{run}/{f} is not in the runs")
        if test in pairs:
            raise bad(f"{run}/{test} is labelled twice")
        pairs[test] = train
    return pairs


def load_lake_runs(root: str | os.PathLike, image_size: int = 28, download: bool = False) -> LakeRuns:
    """Read every run (see the module's docstring for where), each image resized to `image_size` as the
    Omniglot loader resizes. Missing or malformed files raise DatasetNotFoundError / CorruptDataError in one
    line naming the file (and, for class_labels.txt, the line)."""
    path = download_lake_runs(root) if download else lake_runs_path(root)
    if not path.exists():
        raise DatasetNotFoundError(f"no Lake runs at {path}. {LAYOUT_HELP}")
    members, zf = _members(path)
    try:
        runs = sorted({run for run, _ in members}, key=lambda r: int(r[3:]))
        if not runs:
            raise DatasetNotFoundError(f"{path}: no run folders (run01/class_labels.txt, ...) in it. {LAYOUT_HELP}")
        names, training, test, answers, train_lists, test_lists = [], [], [], [], [], []
        for run in runs:
            files = {f for r, f in members if r == run and f != "class_labels.txt"}
            if (run, "class_labels.txt") not in members:
                raise DatasetNotFoundError(f"{path}: {run} has no class_labels.txt. {LAYOUT_HELP}")
            label, read = members[(run, "class_labels.txt")]
            try:
                text = _read_bytes(label, read).decode("utf-8")
            except UnicodeDecodeError:
                raise CorruptDataError(f"{label}: not a text file; restore it from {NAME}.zip") from None
            pairs = _parse_labels(run, label, text, files)
            train_files = sorted(f for f in files if f.startswith("training/"))
            test_files = sorted(f for f in files if f.startswith("test/"))
            unlabelled = sorted(set(test_files) - set(pairs))
            if unlabelled or not pairs:
                raise CorruptDataError(f"{label}: no line for {', '.join(unlabelled[:3]) or 'any test item'}; "
                                       f"restore it from {NAME}.zip")
            shape = (len(train_files), len(test_files))
            if not all(shape) or (names and shape != (training[0].shape[0], test[0].shape[0])):
                raise CorruptDataError(f"{path}: {run} has {shape[0]} training images and {shape[1]} test items"
                                       + (f", {names[0]} {training[0].shape[0]} and {test[0].shape[0]}" if names
                                          else "") + f"; restore it from {NAME}.zip")

            def decode(fs: list[str]) -> torch.Tensor:
                return torch.from_numpy(np.stack([_to_array(_read_bytes(*members[(run, f)]), image_size,
                                                            members[(run, f)][0]) for f in fs]))
            index = {f: i for i, f in enumerate(train_files)}
            names.append(run), train_lists.append(train_files), test_lists.append(test_files)
            training.append(decode(train_files)), test.append(decode(test_files))
            answers.append(torch.tensor([index[pairs[f]] for f in test_files]))
    finally:
        if zf is not None:
            zf.close()
    return LakeRuns(names, torch.stack(training), torch.stack(test), torch.stack(answers), train_lists,
                    test_lists, str(path))
