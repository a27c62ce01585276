"""Evaluation on precomputed features: every image of a split is encoded once, episodes gather features.

matchnet.evaluate draws 1,000 episodes per column and encodes every image of every episode: a 20-way 5-shot
column encodes 400,000 images, while the whole Omniglot test split has 33,840 (1,692 classes x 20). A frozen
encoder in eval mode maps each image to the same features whatever episode it is in (BatchNorm uses its
running statistics), so the baselines encode the split once and draw the same episodes (same seeds, same
indices: matchnet.episodes.draw_indices with a CPU generator, as evaluation_episodes does) from the table.
tests/test_baselines.py checks that both paths give the same accuracy.

A FeaturePredictor sees support features, support labels and query features: never the query labels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..data.fewshot import FewShotSplit
from ..episodes import Episodes, draw_indices, rotate
from ..evaluate import COLUMNS, TEST_QUERY, Accuracy, Predictor, mean_ci95

Encoder = Callable[[torch.Tensor], torch.Tensor]  # images [B, C, H, W] in [0, 1] -> features [B, ...]


@dataclass
class FeatureEpisodes:
    """A batch of E episodes as features. There is deliberately no query_labels field."""

    support: torch.Tensor  # [E, N*k, ...]
    support_labels: torch.Tensor  # long [E, N*k] in [0, n_way)
    query: torch.Tensor  # [E, Q, ...]
    n_way: int


FeaturePredictor = Callable[[FeatureEpisodes], torch.Tensor]  # -> log-probabilities [E, Q, N]


def split_images(split: FewShotSplit, classes: torch.Tensor) -> torch.Tensor:
    """Every drawing of the given classes, rotated as the split says: float [c, per_class, C, H, W] in [0, 1]."""
    images = split.images[split.source[classes]]  # [c, per_class, (C,) H, W]
    if images.dim() == 4:
        images = images.unsqueeze(2)
    turns = split.rotation[classes].view(-1, 1).expand(-1, split.per_class)
    return rotate(images, turns).float().div_(255)


@torch.no_grad()
def class_features(split: FewShotSplit, encode: Encoder, batch_images: int = 1024) -> torch.Tensor:
    """encode() applied to every (class, drawing) of the split: [num_classes, per_class, ...] on split.device."""
    per_chunk = max(1, batch_images // split.per_class)
    out = []
    for start in range(0, split.num_classes, per_chunk):
        classes = torch.arange(start, min(start + per_chunk, split.num_classes), device=split.device)
        images = split_images(split, classes)
        feats = encode(images.flatten(0, 1))
        out.append(feats.view(len(classes), split.per_class, *feats.shape[1:]))
    return torch.cat(out)


def gather_features(table: torch.Tensor, classes: torch.Tensor, drawings: torch.Tensor,
                    shot: int) -> tuple[FeatureEpisodes, torch.Tensor]:
    """The episodes given by (classes [E, N], drawings [E, N, k+q]) from a class_features table.

    Returns the FeatureEpisodes and, separately, the query labels (for scoring only).
    Ordering matches matchnet.episodes.gather: class by class, labels 0..N-1 in draw order.
    """
    classes, drawings = classes.to(table.device), drawings.to(table.device)
    e, n, m = drawings.shape
    feats = table[classes.unsqueeze(-1), drawings]  # [E, N, k+q, ...]
    labels = torch.arange(n, device=table.device).view(1, n, 1).expand(e, n, m)
    episodes = FeatureEpisodes(support=feats[:, :, :shot].flatten(1, 2),
                               support_labels=labels[:, :, :shot].flatten(1),
                               query=feats[:, :, shot:].flatten(1, 2), n_way=n)
    return episodes, labels[:, :, shot:].flatten(1)


def feature_episodes(table: torch.Tensor, way: int, shot: int, query: int, episodes: int, seed: int,
                     batch: int = 50) -> Iterator[tuple[FeatureEpisodes, torch.Tensor]]:
    """(episodes, their query labels), `batch` at a time: the episodes evaluation_episodes draws for `seed`."""
    generator = torch.Generator().manual_seed(seed)  # CPU, exactly as evaluation_episodes draws them
    idx = draw_indices(table.shape[0], table.shape[1], episodes, way, shot, query, generator)
    for start in range(0, episodes, batch):
        yield gather_features(table, idx.classes[start:start + batch], idx.drawings[start:start + batch], shot)


@torch.no_grad()
def evaluate_features(predict: FeaturePredictor, table: torch.Tensor, way: int, shot: int,
                      query: int = TEST_QUERY, episodes: int = 1000, seed: int = 0, batch: int = 50) -> Accuracy:
    """matchnet.evaluate.evaluate on a feature table: the same episodes for the same seed, the same statistic."""
    accs = []
    for ep, query_labels in feature_episodes(table, way, shot, query, episodes, seed, batch):
        correct = predict(ep).argmax(-1) == query_labels
        accs.append(correct.float().mean(1).cpu())
    mean, ci = mean_ci95(torch.cat(accs))
    return Accuracy(way, shot, query, episodes, seed, 100 * mean, 100 * ci)


def column_seed(seed: int, column: int) -> int:
    """The seed matchnet.evaluate.evaluate_table gives its column-th column."""
    return seed + 1000 * column


def evaluate_features_table(predict: FeaturePredictor, table: torch.Tensor, episodes: int = 1000, seed: int = 0,
                            query: int = TEST_QUERY, columns=COLUMNS, batch: int = 50) -> list[Accuracy]:
    """Every Table 1 column, with evaluate_table's seeds."""
    return [evaluate_features(predict, table, way, shot, query, episodes, column_seed(seed, i), batch)
            for i, (way, shot) in enumerate(columns)]


def as_predictor(predict: FeaturePredictor, encode: Encoder) -> Predictor:
    """A matchnet.evaluate Predictor (Episodes -> log-probs) from a feature predictor and its encoder."""
    def run(ep: Episodes) -> torch.Tensor:
        def enc(images: torch.Tensor) -> torch.Tensor:
            feats = encode(images.flatten(0, 1))
            return feats.view(*images.shape[:2], *feats.shape[1:])
        return predict(FeatureEpisodes(enc(ep.support), ep.support_labels, enc(ep.query), ep.n_way))
    return run


def class_mask(labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """[E, S] labels -> bool [E, N, S], True where support example s belongs to class c."""
    return labels.unsqueeze(1) == torch.arange(n_way, device=labels.device).view(1, n_way, 1)


def nearest_neighbour_log_probs(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_way: int,
                                scale: float = 10.0) -> torch.Tensor:
    """Cosine nearest-neighbour matching, as log-probabilities [E, Q, N].

    Each class scores its best-matching support example (the max cosine over its k shots); the argmax is the
    class of the query's nearest support example. The softmax over scale x score only makes the output a
    distribution; it does not change the decision.
    """
    cosine = F.normalize(query.flatten(2), dim=-1) @ F.normalize(support.flatten(2), dim=-1).transpose(1, 2)
    mask = class_mask(labels, n_way).unsqueeze(1)  # [E, 1, N, S]
    best = cosine.unsqueeze(2).masked_fill(~mask, -math.inf).amax(-1)  # [E, Q, N]
    return torch.log_softmax(scale * best, dim=-1)


def nearest_neighbour(ep: FeatureEpisodes) -> torch.Tensor:
    """The FeaturePredictor for plain cosine nearest-neighbour matching on whatever the features are."""
    return nearest_neighbour_log_probs(ep.support, ep.support_labels, ep.query, ep.n_way)


VAL_SEED = 12345  # matchnet.train.validate's seed: the same validation episodes as the Matching Network's


@torch.no_grad()
def validate_nearest_neighbour(encode: Encoder, split: FewShotSplit, tasks=((20, 1), (5, 1)), episodes: int = 500,
                               query: int = TEST_QUERY) -> dict[str, float]:
    """Cosine nearest-neighbour accuracy of an encoder on a split's few-shot tasks, {"val_20w1s": %, ...}."""
    table = class_features(split, encode)
    return {f"val_{way}w{shot}s": evaluate_features(nearest_neighbour, table, way, shot, query, episodes,
                                                    VAL_SEED).mean for way, shot in tasks}


def images_of(split: FewShotSplit, classes: torch.Tensor, drawings: torch.Tensor) -> torch.Tensor:
    """Images of (class, drawing) pairs, each [B] long: float [B, C, H, W] in [0, 1], rotated as the split says.

    Goes through matchnet.episodes.gather (as 1-way 1-shot episodes), the path every episode takes."""
    from ..episodes import EpisodeIndices, gather

    ep = gather(split, EpisodeIndices(classes.view(-1, 1), drawings.view(-1, 1, 1)), shot=1)
    return ep.support[:, 0]
