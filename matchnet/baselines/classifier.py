"""The Baseline Classifier (section 4.1.1): the Conv-4 embedding trained as an ordinary classifier over every
training class ("a fully connected layer followed by a softmax"), then its 64-d features (the layer before the
softmax) used for cosine nearest-neighbour matching on new classes, with or without fine-tuning on S'.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.fewshot import FewShotSplit
from ..model import Conv4
from .features import images_of, validate_nearest_neighbour
from .loop import fit
from .store import save_encoder


@dataclass
class ClassifierConfig:
    name: str = "baseline-classifier"
    split: str = "vinyals"
    train_on: str = "train"  # the Matching Network's training classes; val selects the epoch
    hidden: int = 64
    batch: int = 256  # images per step, drawn uniformly from all (class, drawing) pairs
    steps: int = 3200  # 256 x 3200 = 10 passes over 4,112 classes x 20 drawings
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    val_every: int = 400
    val_episodes: int = 500
    val_tasks: list = field(default_factory=lambda: [[20, 1], [5, 1]])  # [way, shot]; the first selects
    log_every: int = 100
    checkpoint_every: int = 400
    time_limit: float = 0.0  # seconds of training (0: none); reaching it ends the run, best/ is kept
    seed: int = 0
    progress: bool = True

    def check(self) -> None:
        for key in ("batch", "steps", "val_every", "val_episodes", "log_every", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1")


class BaselineClassifier(nn.Module):
    """Conv-4 (the Matching Network's embedding, same layers) + a linear layer over the training classes."""

    def __init__(self, num_classes: int, hidden: int = 64):
        super().__init__()
        self.encoder = Conv4(1, hidden)
        self.head = nn.Linear(self.encoder.out_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, 28, 28] -> logits [B, num_classes]."""
        return self.head(self.encoder(images))


def train_classifier(cfg: ClassifierConfig, splits: dict[str, FewShotSplit], run_dir: Path,
                     device: torch.device, resume: bool = True, stop_after: int | None = None) -> dict:
    """Cross-entropy over cfg.train_on's classes; best/ = the encoder with the best val 20-way 1-shot NN accuracy."""
    train = splits[cfg.train_on].to(device)
    val = splits["val"].to(device)
    torch.manual_seed(cfg.seed)
    model = BaselineClassifier(train.num_classes, cfg.hidden).to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    def step():
        classes = torch.randint(train.num_classes, (cfg.batch,), device=device, generator=generator)
        drawings = torch.randint(train.per_class, (cfg.batch,), device=device, generator=generator)
        logits = model(images_of(train, classes, drawings))
        return F.cross_entropy(logits, classes), (logits.argmax(-1) == classes).float().mean()

    info = {"trained_as": "baseline-classifier", "train_split": f"{cfg.split}/{cfg.train_on}",
            "train_classes": train.num_classes, "recipe": vars(cfg)}
    return fit(model, cfg, run_dir, step, generator,
               validate=lambda: validate_nearest_neighbour(model.encoder, val, cfg.val_tasks, cfg.val_episodes),
               save=lambda folder: save_encoder(model.encoder, folder, info), resume=resume, stop_after=stop_after)
