"""One-shot language episodes (section 4.1.3): N label words, k support sentences and q query sentences each.

Every sentence of an episode contains its label word, and every occurrence of it is replaced by the blank: a
second occurrence left in place would show the answer (it did in 277 of the 5,235 test word-sentence pairs).
No sentence appears twice in an episode, so support and queries never overlap, even when a sentence holds two
of the episode's words. Words with fewer than `min_sentences` distinct sentences are not used.

Held-out words (`hide`): after blanking, every other occurrence of a hidden word becomes `<unk>`, so a model
fed these episodes never reads a test or validation word, in training or at test time ("neither the words nor
the sentences used during test time had been seen during training"). The oracle's pool hides nothing: it is
trained on all the words, as in the paper. Hiding changes no draw: the same seed gives the same sentences.

Batches come out as matchnet.episodes.Episodes, as for images: support/query are token ids [E, N*k | N*q, T]
(padded with PAD_ID to the longest sentence of the batch), labels 0..N-1 in draw order, class by class, and
`classes` holds the label words' ids [E, N] (the candidates the language-model oracle fills in).
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

import torch

from ..episodes import Episodes
from .vocab import BLANK_ID, PAD_ID


@dataclass
class SentencePool:
    """The sentences that hold each usable label word, and the words an episode's reader must not see."""

    sentences: list[list[int]]
    words: list[int]  # usable label words, sorted
    holders: dict[int, list[int]]  # word -> indices of the sentences that contain it
    hide: frozenset[int] = frozenset()  # word ids shown as `unk` wherever they are not the blanked label
    unk: int | None = None

    def blank(self, sentence: list[int], word: int) -> list[int]:
        """`sentence` with every `word` blanked, then every hidden word (other than `word`) made `unk`."""
        return [BLANK_ID if t == word else self.unk if t in self.hide else t for t in sentence]


def build_pool(sentences: list[list[int]], label_words: list[int], min_sentences: int,
               hide: set[int] | frozenset[int] = frozenset(), unk: int | None = None) -> SentencePool:
    """Index `sentences` by the label words they contain; keep words found in at least `min_sentences` of them.

    hide, unk: word ids to show as `unk` in every episode sentence (see the module docstring).
    """
    if hide and unk is None:
        raise ValueError("hiding words needs the id of <unk> to put in their place")
    wanted = set(label_words)
    holders: dict[int, list[int]] = defaultdict(list)
    for s, sentence in enumerate(sentences):
        for w in dict.fromkeys(sentence):  # each word once per sentence, in order
            if w in wanted:
                holders[w].append(s)
    words = sorted(w for w in holders if len(holders[w]) >= min_sentences)
    return SentencePool(sentences, words, {w: holders[w] for w in words}, frozenset(hide), unk)


@dataclass
class Episode:
    words: list[int]  # the N label words, label i = words[i]
    support: list[list[int]]  # N*k blanked sentences, class by class
    query: list[list[int]]  # N*q blanked sentences, class by class
    support_ids: list[int]  # which pool sentences, for checks
    query_ids: list[int]


def draw_episode(pool: SentencePool, way: int, shot: int, query: int, rng: random.Random,
                 max_tries: int = 100) -> Episode:
    """One episode; redrawn (rarely) when sentences shared between its words leave one word short."""
    if way > len(pool.words):
        raise ValueError(f"{way}-way episodes need {way} words; this pool has {len(pool.words)} usable words")
    for _ in range(max_tries):
        words = rng.sample(pool.words, way)
        used: set[int] = set()
        picks: list[list[int]] = []
        for w in words:
            holders = pool.holders[w]
            # Draw a few spare sentences so that ones already taken by another word can be skipped.
            spare = rng.sample(holders, min(len(holders), shot + query + len(used)))
            chosen = [s for s in spare if s not in used][: shot + query]
            if len(chosen) < shot + query:
                break
            used.update(chosen)
            picks.append(chosen)
        else:
            support, query_s, support_ids, query_ids = [], [], [], []
            for w, chosen in zip(words, picks):
                for n, s in enumerate(chosen):
                    blanked = pool.blank(pool.sentences[s], w)
                    (support if n < shot else query_s).append(blanked)
                    (support_ids if n < shot else query_ids).append(s)
            return Episode(words, support, query_s, support_ids, query_ids)
    raise ValueError(f"could not draw a {way}-way {shot}+{query} episode with disjoint sentences in {max_tries} tries")


def pad(sentences: list[list[int]], width: int) -> torch.Tensor:
    out = torch.full((len(sentences), width), PAD_ID, dtype=torch.long)
    for i, s in enumerate(sentences):
        out[i, : len(s)] = torch.tensor(s)
    return out


def collate(episodes: list[Episode], way: int, shot: int, query: int) -> Episodes:
    """Stack episodes into one batch, every sentence padded to the batch's longest."""
    width = max(len(s) for ep in episodes for s in ep.support + ep.query)
    labels = torch.arange(way)
    return Episodes(
        support=torch.stack([pad(ep.support, width) for ep in episodes]),
        support_labels=labels.repeat_interleave(shot).expand(len(episodes), -1),
        query=torch.stack([pad(ep.query, width) for ep in episodes]),
        query_labels=labels.repeat_interleave(query).expand(len(episodes), -1),
        classes=torch.tensor([ep.words for ep in episodes]),
        n_way=way,
    )


class SentenceEpisodeSampler:
    """Endless training episodes, E at a time; `shots` > 1 value: each batch draws its k from them."""

    def __init__(self, pool: SentencePool, way: int, shots: list[int], query: int, seed: int = 0):
        self.pool, self.way, self.shots, self.query = pool, way, list(shots), query
        self.rng = random.Random(seed)

    def sample(self, episodes: int = 1) -> Episodes:
        shot = self.rng.choice(self.shots)
        eps = [draw_episode(self.pool, self.way, shot, self.query, self.rng) for _ in range(episodes)]
        return collate(eps, self.way, shot, self.query)


def evaluation_episodes(pool: SentencePool, way: int, shot: int, query: int, episodes: int, seed: int,
                        batch: int = 50) -> Iterator[Episodes]:
    """The same `episodes` episodes for a given seed, every time, yielded `batch` at a time."""
    rng = random.Random(seed)
    eps = [draw_episode(pool, way, shot, query, rng) for _ in range(episodes)]
    for start in range(0, episodes, batch):
        yield collate(eps[start:start + batch], way, shot, query)
