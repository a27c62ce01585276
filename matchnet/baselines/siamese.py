"""The Convolutional Siamese Net (Koch, Zemel and Salakhutdinov, 2015), reimplemented as the paper did: twin
embeddings trained on a same-or-different task over the training classes, then the embedding used for cosine
nearest-neighbour matching on new classes.

Koch et al.'s verification head: p(same | x1, x2) = sigmoid(sum_j alpha_j |f(x1)_j - f(x2)_j| + b), trained
with binary cross-entropy on balanced pairs. The embedding f here is the same Conv-4 as every other row (the
paper compares matching functions, not backbones); Koch's larger network and affine distortions are not used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.fewshot import FewShotSplit
from ..config import LoopConfig, check_positive
from ..distributed import current_dist
from ..engine import FunctionTask, TrainingError, fit
from ..model import Conv4
from .features import FeatureEpisodes, class_mask, images_of, validate_nearest_neighbour
from .store import load_weights, read_meta, save_weights

KIND = "siamese"


@dataclass
class SiameseConfig(LoopConfig):
    name: str = "baseline-siamese"
    split: str = "vinyals"
    train_on: str = "train"
    hidden: int = 64
    pairs: int = 128  # pairs per step over all processes, half same-class, half different-class
    steps: int = 3000
    warmup_steps: int = 100
    val_every: int = 500
    val_episodes: int = 500
    val_tasks: list = field(default_factory=lambda: [[20, 1], [5, 1]])  # [way, shot]; the first selects
    checkpoint_every: int = 500

    def check(self) -> None:
        super().check()
        if self.pairs < 2 or self.pairs % 2:
            raise ValueError("pairs must be even (half same, half different) and at least 2")
        check_positive(self, "val_episodes")


class SiameseNet(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.encoder = Conv4(1, hidden)
        self.head = nn.Linear(self.encoder.out_dim, 1)  # the alpha_j and b of Koch et al.'s eq. for p

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Logits of "same class" for pairs of images [B, 1, 28, 28] x 2 -> [B]."""
        # One encoder pass over both halves, so BatchNorm normalises them with the same statistics.
        f = self.encoder(torch.cat([first, second]))
        f1, f2 = f.chunk(2)
        return self.head((f1 - f2).abs()).squeeze(-1)


def pair_indices(num_classes: int, per_class: int, pairs: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(class1, drawing1, class2, drawing2, same), each [pairs]: the first half pairs two different drawings of
    one class (same = 1), the second half drawings of two different classes (same = 0)."""
    device, half = generator.device, pairs // 2
    c1 = torch.randint(num_classes, (pairs,), device=device, generator=generator)
    # A non-zero offset modulo n guarantees a different class (or drawing): no rejection loop.
    other = (c1 + torch.randint(1, num_classes, (pairs,), device=device, generator=generator)) % num_classes
    c2 = torch.cat([c1[:half], other[half:]])
    d1 = torch.randint(per_class, (pairs,), device=device, generator=generator)
    d2 = (d1 + torch.randint(1, per_class, (pairs,), device=device, generator=generator)) % per_class
    same = torch.cat([torch.ones(half, device=device), torch.zeros(pairs - half, device=device)])
    return c1, d1, c2, d2, same


def sample_pairs(split: FewShotSplit, pairs: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(first images, second images, same [pairs] float) for pair_indices' pairs."""
    c1, d1, c2, d2, same = pair_indices(split.num_classes, split.per_class, pairs, generator)
    return images_of(split, c1, d1), images_of(split, c2, d2), same


def train_siamese(cfg: SiameseConfig, splits: dict[str, FewShotSplit], run_dir: Path, device: torch.device,
                  resume: bool = True, stop_after: int | None = None) -> dict:
    """BCE on same/different pairs; best/ = the encoder with the best val 20-way 1-shot NN accuracy."""
    train = splits[cfg.train_on].to(device)
    val = splits["val"].to(device)
    torch.manual_seed(cfg.seed)
    model = SiameseNet(cfg.hidden).to(device)
    generator = torch.Generator(device=device)  # the engine seeds it per rank
    world = current_dist().world
    if cfg.pairs % (2 * world):  # each rank's share is half same, half different
        raise TrainingError(f"pairs = {cfg.pairs} per step gives {world} processes uneven or odd shares; choose a "
                            f"multiple of {2 * world}")

    def loss(net: nn.Module, pairs: tuple[torch.Tensor, ...]):
        first, second, same = pairs
        logits = net(first, second)
        return F.binary_cross_entropy_with_logits(logits, same), ((logits > 0).float() == same).float().mean()

    info = {"trained_as": "siamese (Koch et al. 2015)", "train_split": f"{cfg.split}/{cfg.train_on}",
            "recipe": vars(cfg)}
    task = FunctionTask(model, [generator], lambda shard: sample_pairs(train, shard.size, generator), loss,
                        validate=lambda m: validate_nearest_neighbour(m.encoder, val, cfg.val_tasks,
                                                                      cfg.val_episodes),
                        save=lambda m, folder: save_weights(m, folder, KIND, {"hidden": cfg.hidden}, info),
                        global_batch=cfg.pairs, batch_key="pairs")
    return fit(task, cfg, run_dir, resume=resume, stop_after=stop_after)


def load_siamese(folder: str | Path, device: str | torch.device = "cpu") -> SiameseNet:
    return load_weights(SiameseNet(**read_meta(folder)["config"]), folder, KIND, device)


def verification_predictor(model: SiameseNet):
    """Koch et al.'s own one-shot rule, for comparison with the table's cosine: each query takes the class of
    the support example with the highest p(same), the learned weighted L1 head, on encoder features."""
    @torch.no_grad()
    def predict(ep: FeatureEpisodes) -> torch.Tensor:
        scores = torch.stack([model.head((q.unsqueeze(1) - s.unsqueeze(0)).abs()).squeeze(-1)  # [Q, S] logits
                              for q, s in zip(ep.query, ep.support)])  # one episode at a time: [Q, S, d] is big
        mask = class_mask(ep.support_labels, ep.n_way).unsqueeze(1)  # [E, 1, N, S]
        best = scores.unsqueeze(2).masked_fill(~mask, float("-inf")).amax(-1)  # [E, Q, N]
        return torch.log_softmax(best, dim=-1)
    return predict
