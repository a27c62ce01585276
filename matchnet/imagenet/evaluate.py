"""Table 3's test: 5-way 1-shot on feature tables. Each image of the test classes is encoded once (frozen models
in eval mode map an image to the same features in any episode), then the episodes of matchnet.baselines.features
(the seeds and indices matchnet.evaluate draws) gather from the table, as the project's other tables do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..baselines.features import FeatureEpisodes, evaluate_features, nearest_neighbour
from ..episodes import draw_indices
from ..evaluate import Accuracy, mean_ci95
from .data import LabelledFiles, Reported, collate_images, loader, note


@torch.no_grad()
def feature_table(encode: Callable[[torch.Tensor], torch.Tensor], files: dict[str, list[Path]], size: int,
                  workers: int, device: torch.device, per_class: int | None = None,
                  batch: int = 256, desc: str = "") -> torch.Tensor:
    """encode() of every image, as [classes, per_class, ...]: per_class = the fewest readable images of any
    class (ILSVRC's val/ has 50 of each), or `per_class` if smaller. Unreadable files are named and skipped."""
    classes = list(files)
    items = [(f, i) for i, c in enumerate(classes) for f in files[c][:per_class]]
    data = LabelledFiles(items, size, train=False)
    report = Reported()
    feats, labels = [], []
    batches = loader(data, batch, None, workers, collate_images, device)
    for images, y, skipped in tqdm(batches, desc=desc or "encoding", unit="batch", leave=False, disable=not desc):
        report(skipped)
        if len(y):
            feats.append(encode(images.to(device, non_blocking=True)).float().cpu())
            labels.append(y)
    feats, labels = torch.cat(feats), torch.cat(labels)
    counts = torch.bincount(labels, minlength=len(classes))
    per = int(counts.min())
    if per < 2:
        raise ValueError(f"class {classes[int(counts.argmin())]} has {per} readable test image(s); episodes need 2+")
    if per < int(counts.max()):
        note(f"feature table: {per} images per class (the fewest readable of any class)")
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    take = (starts.view(-1, 1) + torch.arange(per).view(1, -1)).flatten()
    return feats[order][take].view(len(classes), per, *feats.shape[1:]).to(device)


def pixels(images: torch.Tensor, side: int = 32) -> torch.Tensor:
    """The pixel baseline's features: the (centre-cropped) image, area-downsampled to side x side, flattened.
    Full-size pixels of 44,100 test images would be 47 GB of floats; the cosine of downsampled images is the
    same baseline at a size that fits."""
    return F.adaptive_avg_pool2d(images, side).flatten(1)


def nearest_neighbour_accuracy(table: torch.Tensor, way: int, shot: int, query: int, episodes: int,
                               seed: int) -> Accuracy:
    return evaluate_features(nearest_neighbour, table, way, shot, query, episodes, seed)


def matching_accuracy(model, table: torch.Tensor, way: int, shot: int, query: int, episodes: int,
                      seed: int) -> Accuracy:
    """The Matching Network (FCE and all) on a table of its encoder's features g'(x) = f'(x)."""
    def predict(ep: FeatureEpisodes) -> torch.Tensor:
        support = model.embed_support(None, ep.support_labels, ep.n_way, features=ep.support)
        return model.classify(support, features=ep.query)[0]
    return evaluate_features(predict, table, way, shot, query, episodes, seed)


@torch.no_grad()
def oracle_accuracy(logits: torch.Tensor, class_ids: torch.Tensor, way: int, shot: int, query: int,
                    episodes: int, seed: int, batch: int = 50) -> Accuracy:
    """The Oracle row ("Softmax (Full)"): a classifier trained on all 1,000 classes, its logits restricted to
    the episode's `way` classes. logits: [classes, per_class, 1000]; class_ids: each table class's index in
    the oracle's output. The episodes are the same as the other rows' (same draw, same seed); the oracle has
    no use for the support set."""
    generator = torch.Generator().manual_seed(seed)
    idx = draw_indices(logits.shape[0], logits.shape[1], episodes, way, shot, query, generator)
    accs = []
    for start in range(0, episodes, batch):
        classes = idx.classes[start:start + batch].to(logits.device)  # [E, N]
        drawings = idx.drawings[start:start + batch, :, shot:].to(logits.device)  # [E, N, q]
        e, n, q = drawings.shape
        rows = logits[classes.unsqueeze(-1), drawings]  # [E, N, q, 1000]
        cols = class_ids.to(logits.device)[classes].view(e, 1, 1, n).expand(e, n, q, n)
        scores = rows.gather(-1, cols)  # [E, N(true), q, N(candidate)]
        truth = torch.arange(n, device=logits.device).view(1, n, 1)
        accs.append((scores.argmax(-1) == truth).float().flatten(1).mean(1).cpu())
    mean, ci = mean_ci95(torch.cat(accs))
    return Accuracy(way, shot, query, episodes, seed, 100 * mean, 100 * ci)
