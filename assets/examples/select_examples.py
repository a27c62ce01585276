"""Re-create assets/examples/omniglot/ from the Omniglot zips (run once; the result is committed).

Picks 20 characters of the vinyals *test* split (unrotated, never seen in training), from the 12 test
alphabets that lie wholly in that split, and copies 6 drawings of each, unchanged (105x105, 1-bit PNG):
enough for a 20-way 5-shot episode with one query per class.

    python assets/examples/select_examples.py /path/to/omniglot-py/images_evaluation.zip
"""
from __future__ import annotations

import random
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).parent
SPLIT = HERE.parent.parent / "matchnet" / "data" / "splits" / "vinyals" / "test.txt"
CHARACTERS, DRAWINGS, SEED = 20, 6, 0
PARTIAL = {"Gurmukhi"}  # its other characters are in the training split: skip the alphabet altogether


def main(zip_path: str) -> None:
    rng = random.Random(SEED)
    chars = sorted({line.rsplit("/", 1)[0] for line in SPLIT.read_text().split() if line.endswith("rot000")})
    by_alphabet: dict[str, list[str]] = {}
    for c in chars:
        alphabet = c.split("/")[0]
        if alphabet not in PARTIAL:
            by_alphabet.setdefault(alphabet, []).append(c)
    alphabets = sorted(by_alphabet)
    picked = [rng.choice(by_alphabet[a]) for a in alphabets]  # one per alphabet first: variety
    rest = [c for c in chars if c.split("/")[0] in by_alphabet and c not in picked]
    picked += rng.sample(rest, CHARACTERS - len(picked))
    out = HERE / "omniglot"
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        for c in sorted(picked):
            pngs = sorted(n for n in names if f"images_evaluation/{c}/" in n and n.endswith(".png"))
            for n in sorted(rng.sample(pngs, DRAWINGS)):
                target = out / c / Path(n).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(n))
    print(f"{len(picked)} characters x {DRAWINGS} drawings -> {out}")


if __name__ == "__main__":
    main(sys.argv[1])
