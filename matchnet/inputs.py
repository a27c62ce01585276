"""The rules for what a person hands to a model, one implementation for the demo (its page and /classify) and
the library's predict API (matchnet.predict, `train/run.py predict`).

Shared rules: at least 2 classes, each with a non-empty, distinct name and at least one image; every image is
read or the whole call is refused with one InputError naming the file and what is wrong (decoding limits,
MAX_BYTES and MAX_PIXELS, are in matchnet.inference). Folders follow the training data's layout
(matchnet.data.files): one subfolder per class, image files at any depth, hidden files and other extensions
ignored. The page's limits (PAGE_LIMITS) cap what one web request may ask for; the library has none.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .data.files import IMAGE_EXTENSIONS
from .data.files import image_files as listed

T = TypeVar("T")


class InputError(ValueError):
    """Bad user input; the message is meant to be shown to the user as is."""


@dataclass(frozen=True)
class Limits:
    """Caps on one call; None: no cap."""

    way: int | None = None  # classes
    shot: int | None = None  # images per class
    queries: int | None = None  # queries per call

    @property
    def support(self) -> int | None:
        return self.way * self.shot if self.way is not None and self.shot is not None else None


# The demo's limits (a web page and its API): what a page can show and one request should cost. The library's
# predict API takes any number of classes, images and queries.
MAX_WAY = 20
MAX_SHOT = 5
MAX_QUERIES = 32
PAGE_LIMITS = Limits(MAX_WAY, MAX_SHOT, MAX_QUERIES)
NO_LIMITS = Limits()


def class_order(labels: Sequence[str]) -> list[str]:
    """Distinct labels in order of first appearance."""
    return list(dict.fromkeys(labels))


def check_support(labels: Sequence[str], classes: Sequence[str] | None = None) -> list[str]:
    """The class list for these support labels, or an InputError saying what is wrong."""
    classes = class_order(labels) if classes is None else list(classes)
    if any(not str(c).strip() for c in classes):
        raise InputError("every class needs a name")
    seen: set[str] = set()
    for c in classes:
        if c in seen:
            raise InputError(f"class names must be distinct: '{c}' appears twice")
        seen.add(c)
    if len(classes) < 2:
        raise InputError(f"at least 2 classes are needed, got {len(classes)}")
    missing = [c for c in classes if c not in set(labels)]
    if missing:
        raise InputError(f"class '{missing[0]}' has no example: draw or upload at least one")
    return classes


def check_request(n_support: int, labels: Sequence[str], n_queries: int | None = None,
                  limits: Limits = NO_LIMITS) -> list[str]:
    """A support set of n_support images with these labels (and n_queries queries, when known): the class
    list in order of first appearance, or an InputError saying what is wrong."""
    if not n_support:
        raise InputError("no support set: send support images and one label per image")
    if n_queries is not None:
        check_queries(n_queries, limits, n_support)
    if limits.support is not None and n_support > limits.support:
        raise InputError(f"at most {limits.support} support images per call; got {n_support}")
    if len(labels) != n_support:
        raise InputError(f"{n_support} support images but {len(labels)} labels: give one label per image")
    classes = check_support(labels)
    if limits.way is not None and len(classes) > limits.way:
        raise InputError(f"at most {limits.way} classes, got {len(classes)}")
    if limits.shot is not None:
        crowded = next((c for c in classes if labels.count(c) > limits.shot), None)
        if crowded is not None:
            raise InputError(f"at most {limits.shot} examples per class; class '{crowded}' has "
                             f"{labels.count(crowded)}")
    return classes


def check_queries(n_queries: int, limits: Limits = NO_LIMITS, n_support: int | None = None) -> None:
    if not n_queries:
        raise InputError("no query image: send one or more query images")
    over = limits.queries is not None and n_queries > limits.queries
    if over or (n_support is not None and limits.support is not None and n_support > limits.support):
        if n_support is None:
            raise InputError(f"at most {limits.queries} query images per call; got {n_queries}")
        raise InputError(f"at most {limits.support} support and {limits.queries} query images per call; got "
                         f"{n_support} and {n_queries}")


def is_path(source: object) -> bool:
    return isinstance(source, (str, os.PathLike))


def read_all(sources: Iterable[Any], read: Callable[[Any], T], what: str, names: Sequence[str]) -> list[T]:
    """All or none: every source through `read`, or one InputError naming the first bad one as
    "{what} {number} ({name}): {what is wrong}"."""
    out = []
    for i, source in enumerate(sources):
        try:
            out.append(read(source))
        except InputError as e:
            message = str(e)
            if is_path(source):  # the decoder names the file itself; say it once
                message = message.removeprefix(f"{Path(source).name}: ")
            raise InputError(f"{what} {i + 1} ({names[i]}): {message}") from None
    return out


# ---------------------------------------------------------------------------------------------- folders

def image_files(folder: Path) -> list[Path]:
    return listed(folder)  # the training data's rule for what an image file is


def extensions() -> str:
    return ", ".join(sorted(IMAGE_EXTENSIONS))


def support_folder(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """FOLDER/<class>/<image files> -> {class: [paths]}, classes and files sorted by name."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: no such folder (a support set is a folder with one subfolder of images per "
                         "class)")
    classes = {d.name: image_files(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    if not classes:
        loose = image_files(root)
        raise InputError(f"{root}: no class subfolders" + (f" (it holds images, e.g. {loose[0].name})" if loose
                                                           else "") + ": put each class's images in a subfolder "
                         "named after the class")
    empty = next((name for name, files in classes.items() if not files), None)
    if empty is not None:
        raise InputError(f"{root / empty}: a class folder with no image files ({extensions()})")
    return classes


def query_files(source: str | os.PathLike) -> list[Path]:
    """A query path: a file is one query; a folder, every image file under it, sorted."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise InputError(f"{path}: a folder with no image files ({extensions()})")
        return files
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    return [path]
