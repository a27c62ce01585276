"""N-way k-shot episodes gathered from a FewShotSplit with torch ops: no DataLoader, no per-image Python.

An episode draws N distinct classes, then k + q distinct drawings of each class; the first k are the support
set, the rest the queries. Support and queries are ordered class by class, labels 0..N-1 in draw order.
Indices are drawn by a torch.Generator: on the split's device for training (fast), on the CPU for
evaluation, so that a seed gives the same episodes on every device (see evaluation_episodes).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .data.fewshot import FewShotSplit


@dataclass
class Episodes:
    """A batch of E episodes. Images are float in [0, 1], [E, N*k | N*q, C, H, W]."""

    support: torch.Tensor
    support_labels: torch.Tensor  # long [E, N*k]
    query: torch.Tensor
    query_labels: torch.Tensor  # long [E, N*q]
    classes: torch.Tensor  # long [E, N]: the split's class ids, for inspection
    n_way: int


@dataclass
class EpisodeIndices:
    classes: torch.Tensor  # long [E, N]
    drawings: torch.Tensor  # long [E, N, k + q]


def draw_indices(num_classes: int, per_class: int, episodes: int, way: int, shot: int, query: int,
                 generator: torch.Generator) -> EpisodeIndices:
    if way > num_classes:
        raise ValueError(f"{way}-way episodes need {way} classes; this split has {num_classes}")
    if shot + query > per_class:
        raise ValueError(f"{shot} shots + {query} queries exceed the {per_class} examples per class")
    device = generator.device
    # argsort of uniform noise = a uniform random permutation per row, batched
    classes = torch.rand(episodes, num_classes, generator=generator, device=device).argsort(dim=1)[:, :way]
    drawings = torch.rand(episodes, way, per_class, generator=generator, device=device).argsort(dim=2)
    return EpisodeIndices(classes, drawings[..., : shot + query])


def gather(split: FewShotSplit, idx: EpisodeIndices, shot: int) -> Episodes:
    """Look the images up and rotate them, all on split.device."""
    classes = idx.classes.to(split.device)
    drawings = idx.drawings.to(split.device)
    e, n, m = drawings.shape
    src = split.source[classes]  # [E, N]
    images = split.images[src.unsqueeze(-1), drawings]  # [E, N, k+q, (C,) H, W]
    if images.dim() == 5:
        images = images.unsqueeze(3)  # add the channel axis
    images = rotate(images, split.rotation[classes].view(e, n, 1).expand(e, n, m))
    images = images.float().div_(255)
    labels = torch.arange(n, device=split.device).view(1, n, 1).expand(e, n, m)
    support, query = images[:, :, :shot], images[:, :, shot:]
    return Episodes(
        support=support.flatten(1, 2), support_labels=labels[:, :, :shot].flatten(1),
        query=query.flatten(1, 2), query_labels=labels[:, :, shot:].flatten(1),
        classes=classes, n_way=n,
    )


def rotate(images: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate each image [..., H, W] by its own multiple of 90° (counter-clockwise, as torch.rot90).

    All four rotations are computed and one is picked per image: no data-dependent branch, no host sync.
    """
    turns = torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])  # [4, ...]
    select = quarter_turns.view(1, *quarter_turns.shape, *([1] * (images.dim() - quarter_turns.dim())))
    select = select.expand(1, *images.shape)
    return turns.gather(0, select).squeeze(0)


class EpisodeSampler:
    """Endless training episodes, E at a time, drawn on the split's device.

    shuffle_support: present each support set in a random order rather than class by class (the paper treats
    S as a set; FCE's bidirectional LSTM reads it as a sequence and would otherwise learn the order).
    """

    def __init__(self, split: FewShotSplit, way: int, shot: int, query: int, seed: int = 0,
                 shuffle_support: bool = False):
        self.split, self.way, self.shot, self.query = split, way, shot, query
        self.shuffle_support = shuffle_support
        self.generator = torch.Generator(device=split.device).manual_seed(seed)

    def sample(self, episodes: int = 1) -> Episodes:
        idx = draw_indices(self.split.num_classes, self.split.per_class, episodes, self.way, self.shot,
                           self.query, self.generator)
        ep = gather(self.split, idx, self.shot)
        return shuffle_support(ep, self.generator) if self.shuffle_support else ep


def shuffle_support(ep, generator: torch.Generator):
    """The same episodes (Episodes, or any dataclass with support and support_labels) with each support set,
    examples and labels together, in its own random order."""
    e, s = ep.support_labels.shape
    order = torch.rand(e, s, generator=generator, device=generator.device).argsort(1).to(ep.support.device)
    support = ep.support.gather(1, order.view(e, s, *([1] * (ep.support.dim() - 2))).expand_as(ep.support))
    return replace(ep, support=support, support_labels=ep.support_labels.gather(1, order))


def evaluation_episodes(split: FewShotSplit, way: int, shot: int, query: int, episodes: int, seed: int,
                        batch: int = 100):
    """The same `episodes` episodes for a given seed on any device, yielded `batch` at a time."""
    generator = torch.Generator().manual_seed(seed)
    idx = draw_indices(split.num_classes, split.per_class, episodes, way, shot, query, generator)
    for start in range(0, episodes, batch):
        part = EpisodeIndices(idx.classes[start:start + batch], idx.drawings[start:start + batch])
        yield gather(split, part, shot)
