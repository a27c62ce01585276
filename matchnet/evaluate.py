"""Accuracy with a 95% confidence interval over seeded test episodes, for the paper's Table 1 columns."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from .data.fewshot import FewShotSplit
from .episodes import Episodes, evaluation_episodes

# The paper's Table 1 columns: (way, shot).
COLUMNS = ((5, 1), (5, 5), (20, 1), (20, 5))
# Queries per class at test time: the paper does not say; 20 drawings per character leave 15 after 5 shots.
TEST_QUERY = 15

# A predictor maps a batch of episodes to log-probabilities [E, Q, N]; baselines plug in here too.
Predictor = Callable[[Episodes], torch.Tensor]


@dataclass
class Accuracy:
    way: int
    shot: int
    query: int
    episodes: int
    seed: int
    mean: float  # percent
    ci95: float  # percent, half-width: 1.96 x standard error over episodes

    @property
    def column(self) -> str:
        return f"{self.way}-way {self.shot}-shot"

    def __str__(self) -> str:
        return f"{self.column}: {self.mean:.2f} ± {self.ci95:.2f}% ({self.episodes} episodes)"

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% interval."""
    values = values.double()
    n = values.numel()
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)


def model_predictor(model: torch.nn.Module, amp: bool = False) -> Predictor:
    def predict(ep: Episodes) -> torch.Tensor:
        with torch.autocast(ep.query.device.type, dtype=torch.bfloat16, enabled=amp):
            return model(ep.support, ep.support_labels, ep.query, ep.n_way)[0]
    return predict


@torch.no_grad()
def accuracy(predict: Predictor | torch.nn.Module, batches: Iterable[Episodes], way: int, shot: int, query: int,
             episodes: int, seed: int, batch: int, progress: bool = True, desc: str = "eval",
             device: torch.device | str | None = None) -> Accuracy:
    """Mean per-episode accuracy over the episode batches one protocol draws, ± the 95% interval's half-width.

    Every evaluator (the standard columns, within-alphabet, sentences) goes through here; a module is put in
    eval mode (BatchNorm uses its running statistics) and its mode restored after.
    """
    model = predict if isinstance(predict, torch.nn.Module) else None
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
        predict = model_predictor(model)
    try:
        accs = []
        for ep in tqdm(batches, total=math.ceil(episodes / batch), desc=f"{desc} {way}w{shot}s", leave=False,
                       disable=not progress):
            if device is not None:
                ep = replace(ep, support=ep.support.to(device), support_labels=ep.support_labels.to(device),
                             query=ep.query.to(device), query_labels=ep.query_labels.to(device))
            correct = predict(ep).argmax(-1) == ep.query_labels
            accs.append(correct.float().mean(1).cpu())
    finally:
        if model is not None:
            model.train(was_training)
    mean, ci = mean_ci95(torch.cat(accs))
    return Accuracy(way, shot, query, episodes, seed, 100 * mean, 100 * ci)


def evaluate(predict: Predictor | torch.nn.Module, split: FewShotSplit, way: int, shot: int,
             query: int = TEST_QUERY, episodes: int = 1000, seed: int = 0, batch: int = 50,
             progress: bool = True) -> Accuracy:
    """Mean per-episode accuracy over `episodes` episodes drawn with `seed` (the same on any device)."""
    batches = evaluation_episodes(split, way, shot, query, episodes, seed, batch)
    return accuracy(predict, batches, way, shot, query, episodes, seed, batch, progress)


def evaluate_table(predict: Predictor | torch.nn.Module, split: FewShotSplit, episodes: int = 1000,
                   seed: int = 0, query: int = TEST_QUERY, columns=COLUMNS, batch: int = 50,
                   progress: bool = True) -> list[Accuracy]:
    """Every Table 1 column; each column gets its own seed offset so columns do not share episodes."""
    return [evaluate(predict, split, way, shot, query, episodes, seed + 1000 * i, batch, progress)
            for i, (way, shot) in enumerate(columns)]
