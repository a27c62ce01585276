#!/usr/bin/env python
"""Build the ImageNet class splits of the paper's Table 3 (matchnet/data/splits/imagenet/) from their sources.

    python train/build_imagenet_splits.py --synsets LOC_synset_mapping.txt \
        --wordnet /usr/share/wordnet/data.noun --paper PAPER.md

Inputs (none is downloaded here):
  --synsets  the 1,000 ILSVRC-2012 classes: any text file whose lines start with a wnid (the Kaggle release's
             LOC_synset_mapping.txt, or one wnid per line). The committed list was read from a public copy of
             LOC_synset_mapping.txt (GitHub JasmineLi-805/res18, commit 47e9b8c, LOC_synset_mapping.txt) and
             checked against torchvision's ImageNet category names (same order, 998 of 1,000 names equal; the
             two others are torchvision's renamings "crane bird" and "maillot tank suit").
  --wordnet  WordNet 3.0's data.noun (Princeton WordNet 3.0 as packaged by Debian's wordnet-base 1:3.0-37). An
             ImageNet wnid is "n" + the synset's 8-digit offset in this file; names and the is-a hierarchy
             (hypernym pointers "@" and "@i") are read from it.
  --paper    the paper's text (Appendix C's L_rand and L_dogs lists, as extracted: several entries damaged).

Outputs: synsets.tsv (wnid, WordNet lemmas), hierarchy.tsv (child, parent: every is-a edge above the 1,000),
l_rand.txt, l_dogs.txt, appendix_check.json (how each appendix entry was kept, repaired or dropped).
L_dogs is every ILSVRC-2012 class below WordNet's dog.n.01 (n02084071); L_rand is the appendix's list, a
malformed entry repaired only where exactly one ILSVRC-2012 synset is one edit away (a digit inserted,
deleted, replaced, or two adjacent digits swapped) and that synset is not already on the list.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from matchnet.atomic import write_text  # noqa: E402

OUT = ROOT / "matchnet" / "data" / "splits" / "imagenet"
DOG = "n02084071"
WNID = re.compile(r"n\d+")


def read_wordnet(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """{wnid: lemmas}, {wnid: hypernym wnids} from WordNet's data.noun."""
    names, parents = {}, {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):  # the licence header
            continue
        fields = line.split(" | ")[0].split()
        wnid, count = "n" + fields[0], int(fields[3], 16)
        names[wnid] = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
        rest = fields[4 + 2 * count:]
        pointers = int(rest[0])
        parents[wnid] = [f"n{rest[1 + 4 * i + 1]}" for i in range(pointers)
                         if rest[1 + 4 * i] in ("@", "@i") and rest[1 + 4 * i + 2] == "n"]
    return names, parents


def ancestors(wnid: str, parents: dict[str, list[str]]) -> set[str]:
    seen, todo = set(), list(parents.get(wnid, []))
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += parents.get(p, [])
    return seen


def appendix_lists(paper: str) -> dict[str, list[str]]:
    """The entries of Appendix C's two lists, in order, as printed (damaged ones too)."""
    part = paper[paper.index("# C ImageNet Class Splits"):paper.index("# **D** PTB Class Splits")]
    rand, dogs = part.split("$L_{dogs} =$")
    return {"rand": WNID.findall(rand.split("$L_{rand} =$")[1]), "dogs": WNID.findall(dogs)}


def one_edit(a: str, b: str) -> bool:
    """True when b is a with one digit inserted, deleted or replaced, or two adjacent digits swapped."""
    if a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long_ = sorted((a, b), key=len)
    return len(long_) == len(short) + 1 and any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def build_rand(entries: list[str], ilsvrc: list[str]) -> tuple[list[str], list[dict]]:
    valid = set(ilsvrc)
    kept, log = [], []
    for e in entries:
        if e in valid:
            status, wnid = ("duplicate", None) if e in kept else ("kept", e)
        else:
            fits = [w for w in ilsvrc if one_edit(e, w)]
            fresh = [w for w in fits if w not in entries and w not in kept]
            if len(fits) == 1 and fresh:
                status, wnid = "repaired", fits[0]
            else:
                status, wnid = "dropped", None
            log.append({"entry": e, "status": status, "one_edit_matches": fits,
                        **({"note": "the only match is already on the list"} if fits and not fresh else {})})
        if wnid is not None:
            kept.append(wnid)
        if status == "duplicate":
            log.append({"entry": e, "status": "duplicate"})
    return kept, log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synsets", required=True, type=Path)
    ap.add_argument("--wordnet", required=True, type=Path)
    ap.add_argument("--paper", required=True, type=Path)
    args = ap.parse_args()
    ilsvrc = [WNID.match(ln.strip()).group(0) for ln in args.synsets.read_text().splitlines() if WNID.match(ln.strip())]
    if len(ilsvrc) != 1000 or len(set(ilsvrc)) != 1000:
        sys.exit(f"error: {args.synsets}: expected 1,000 distinct wnids, found {len(set(ilsvrc))}")
    names, parents = read_wordnet(args.wordnet)
    absent = [w for w in ilsvrc if w not in names]
    if absent:
        sys.exit(f"error: {args.wordnet}: {len(absent)} ILSVRC synsets are not in it ({absent[:3]}); WordNet 3.0?")
    ilsvrc.sort()
    edges = sorted({(c, p) for w in ilsvrc for c in {w} | ancestors(w, parents) for p in parents.get(c, [])})
    dogs = [w for w in ilsvrc if DOG in ancestors(w, parents)]
    paper = appendix_lists(args.paper.read_text())
    rand, rand_log = build_rand(paper["rand"], ilsvrc)
    listed_dogs = set(paper["dogs"])
    check = {
        "sources": {"synsets": "ILSVRC-2012's 1,000 classes (LOC_synset_mapping.txt; see the build script)",
                    "wordnet": "Princeton WordNet 3.0 data.noun (Debian wordnet-base 1:3.0-37)",
                    "paper": "Appendix C of the paper, in the text extracted from its PDF"},
        "rand": {"appendix_entries": len(paper["rand"]), "paper_says": 118, "kept": len(rand),
                 "missing_from_118": 118 - len(rand), "not_kept_as_printed": rand_log},
        "dogs": {"appendix_entries": len(paper["dogs"]), "appendix_distinct": len(listed_dogs),
                 "paper_says": 118, "derived": len(dogs),
                 "appendix_entries_in_derived": len(listed_dogs & set(dogs)),
                 "appendix_entries_not_derived": sorted(listed_dogs - set(dogs)),
                 "derived_not_in_appendix": sorted(set(dogs) - listed_dogs)},
    }
    head = ("# generated by train/build_imagenet_splits.py from the ILSVRC-2012 synset list and WordNet 3.0 "
            "(see docs/IMAGENET.md); do not edit\n")
    write_text(OUT / "synsets.tsv", head + "".join(f"{w}\t{', '.join(names[w])}\n" for w in ilsvrc))
    write_text(OUT / "hierarchy.tsv", head + "# child\tparent (WordNet 3.0 hypernym / instance-hypernym edges "
               "above the 1,000 classes)\n" + "".join(f"{c}\t{p}\n" for c, p in edges))
    write_text(OUT / "l_dogs.txt", head + f"# every ILSVRC-2012 class below dog.n.01 ({DOG}): {len(dogs)}\n"
               + "".join(w + "\n" for w in dogs))
    write_text(OUT / "l_rand.txt", head + f"# the paper's Appendix C L_rand, repaired where one synset fits: "
               f"{len(rand)} of 118 ({118 - len(rand)} unknown)\n" + "".join(w + "\n" for w in rand))
    write_text(OUT / "appendix_check.json", json.dumps(check, indent=2) + "\n")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if not isinstance(vv, list)} for k, v in check.items()
                      if k != "sources"}, indent=2))


if __name__ == "__main__":
    main()
