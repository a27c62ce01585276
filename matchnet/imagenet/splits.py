"""The ILSVRC-2012 classes and the paper's two held-out sets (Appendix C), read from package data.

synsets.tsv is the 1,000 classes with their WordNet 3.0 names; hierarchy.tsv the WordNet is-a edges above them;
l_rand.txt and l_dogs.txt the held-out classes L (docs/IMAGENET.md says how each was reconstructed). Training
uses the other classes, ≠L.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

FOLDER = Path(__file__).resolve().parent.parent / "data" / "splits" / "imagenet"
SPLITS = ("rand", "dogs")
DOG = "n02084071"  # WordNet 3.0 dog.n.01


def _lines(name: str) -> list[str]:
    return [ln for ln in (FOLDER / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


@lru_cache(maxsize=None)
def synsets() -> dict[str, str]:
    """{wnid: names} for the 1,000 ILSVRC-2012 classes, in wnid order (the usual class index order)."""
    return dict(ln.split("\t", 1) for ln in _lines("synsets.tsv"))


@lru_cache(maxsize=None)
def hierarchy() -> dict[str, tuple[str, ...]]:
    """{child: parents} of the committed WordNet is-a edges."""
    parents: dict[str, list[str]] = {}
    for ln in _lines("hierarchy.tsv"):
        child, parent = ln.split("\t")
        parents.setdefault(child, []).append(parent)
    return {c: tuple(p) for c, p in parents.items()}


def ancestors(wnid: str) -> set[str]:
    edges, seen, todo = hierarchy(), set(), list(hierarchy().get(wnid, ()))
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += edges.get(p, ())
    return seen


def held_out(split: str) -> list[str]:
    """L for split 'rand' or 'dogs': the classes never trained on, tested one-shot."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    return _lines(f"l_{split}.txt")


def class_split(split: str) -> tuple[list[str], list[str]]:
    """(L, ≠L): the held-out classes and every other ILSVRC-2012 class, each sorted."""
    held = set(held_out(split))
    return sorted(held), [w for w in synsets() if w not in held]
