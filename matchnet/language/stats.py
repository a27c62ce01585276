"""Test accuracy of the language task with two kinds of uncertainty: over episodes and over the word sample.

Only 156 of the 1,000 test words have the 7 sentences in ptb.test.txt that an episode needs, so the test
measures those 156 words: another sample of words could give another number, however many episodes are drawn.
The 95% interval over episodes (matchnet.evaluate.mean_ci95) does not see that. Here every query's outcome is
kept with its label word, and three percentile bootstraps resample

  episodes  the episodes (with their queries), the words fixed: what mean_ci95 approximates
  words     the label words, each query weighted by how often its word was drawn, episodes fixed
  both      words and episodes at once (each query weighted by both counts): the interval to quote

The word bootstrap resamples queries by their label word only; the word's role as a distractor in other
episodes is not resampled with it, so it slightly understates the word-sample uncertainty.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..evaluate import Predictor, mean_ci95, model_predictor
from .episodes import SentencePool, evaluation_episodes


@dataclass
class Outcomes:
    correct: torch.Tensor  # [E, Q] bool: query j of episode i answered right
    words: torch.Tensor  # [E, Q] long: the label word (vocabulary id) of that query

    @property
    def mean(self) -> float:
        """Accuracy in %: the mean over episodes (each has the same number of queries)."""
        return 100 * self.correct.double().mean().item()


@torch.no_grad()
def query_outcomes(predict: Predictor | torch.nn.Module, pool: SentencePool, way: int, shot: int, query: int,
                   episodes: int, seed: int, batch: int = 50, device: torch.device | str = "cpu") -> Outcomes:
    """Every query's outcome over the `episodes` seeded episodes (the ones matchnet.language.train.evaluate uses)."""
    if isinstance(predict, torch.nn.Module):
        predict.eval()
        predict = model_predictor(predict)
    correct, words = [], []
    for ep in evaluation_episodes(pool, way, shot, query, episodes, seed, batch):
        ep = replace(ep, support=ep.support.to(device), support_labels=ep.support_labels.to(device),
                     query=ep.query.to(device), query_labels=ep.query_labels.to(device))
        correct.append((predict(ep).argmax(-1) == ep.query_labels).cpu())
        words.append(ep.classes.gather(1, ep.query_labels.cpu()))  # label i of an episode is its word classes[i]
    return Outcomes(torch.cat(correct), torch.cat(words))


def bootstrap(out: Outcomes, over: str, replicates: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile interval (%, low and high) of the accuracy when resampling `over` (see the docstring)."""
    if over not in ("episodes", "words", "both"):
        raise ValueError(f"bootstrap over 'episodes', 'words' or 'both', not {over!r}")
    gen = torch.Generator().manual_seed(seed)
    correct = out.correct.double()
    e, _ = correct.shape
    vocab, word_index = torch.unique(out.words, return_inverse=True)  # word_index: [E, Q] in 0..W-1
    w = vocab.numel()
    stats = []
    for start in range(0, replicates, 100):  # in chunks: [R, E, Q] weights stay small
        r = min(100, replicates - start)
        weight = torch.ones(r, *correct.shape, dtype=torch.float64)
        if over in ("words", "both"):
            counts = torch.zeros(r, w, dtype=torch.float64)
            counts.scatter_add_(1, torch.randint(w, (r, w), generator=gen), torch.ones(r, w, dtype=torch.float64))
            weight = weight * counts[:, word_index]  # [R, E, Q]: how often each query's word was drawn
        if over in ("episodes", "both"):
            counts = torch.zeros(r, e, dtype=torch.float64)
            counts.scatter_add_(1, torch.randint(e, (r, e), generator=gen), torch.ones(r, e, dtype=torch.float64))
            weight = weight * counts[:, :, None]
        stats.append((weight * correct).sum((1, 2)) / weight.sum((1, 2)).clamp(min=1e-12))
    stats = torch.cat(stats)
    lo, hi = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return 100 * lo, 100 * hi


def summary(out: Outcomes, replicates: int = 2000, seed: int = 0) -> dict:
    """The record of one table cell: the mean, the normal 95% interval over episodes and the three bootstraps."""
    mean, ci = mean_ci95(out.correct.double().mean(1))
    cell = {"mean": 100 * mean, "ci95": 100 * ci, "episodes": out.correct.shape[0],
            "queries_per_episode": out.correct.shape[1], "words": int(torch.unique(out.words).numel()),
            "bootstrap_replicates": replicates, "bootstrap_seed": seed}
    for over in ("episodes", "words", "both"):
        lo, hi = bootstrap(out, over, replicates, seed)
        cell[f"boot_{over}"] = [lo, hi]
    return cell


def half_width(interval: list[float]) -> float:
    return (interval[1] - interval[0]) / 2


def word_share(cell: dict) -> float:
    """The word sample's share of the variance of the 'both' bootstrap, from the two one-way half-widths squared."""
    words, episodes = half_width(cell["boot_words"]) ** 2, half_width(cell["boot_episodes"]) ** 2
    return words / (words + episodes) if words + episodes > 0 else math.nan
