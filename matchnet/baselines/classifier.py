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
from ..config import LoopConfig, check_positive
from ..engine import FunctionTask, Shard, fit
from ..model import Conv4
from .features import images_of, validate_nearest_neighbour
from .encoders import save_encoder


@dataclass
class ClassifierConfig(LoopConfig):
    name: str = "baseline-classifier"
    split: str = "vinyals"
    train_on: str = "train"  # the Matching Network's training classes; val selects the epoch
    hidden: int = 64
    batch: int = 256  # images per step over all processes, drawn uniformly from all (class, drawing) pairs
    steps: int = 3200  # 256 x 3200 = 10 passes over 4,112 classes x 20 drawings
    warmup_steps: int = 100
    val_every: int = 400
    val_episodes: int = 500
    val_tasks: list = field(default_factory=lambda: [[20, 1], [5, 1]])  # [way, shot]; the first selects
    checkpoint_every: int = 400

    def check(self) -> None:
        super().check()
        check_positive(self, "batch", "val_episodes")


class BaselineClassifier(nn.Module):
    """Conv-4 (the Matching Network's embedding, same layers) + a linear layer over the training classes."""

    def __init__(self, num_classes: int, hidden: int = 64, in_channels: int = 1, image_size: int = 28,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
        super().__init__()
        self.encoder = Conv4(in_channels, hidden, image_size=image_size)
        self.head = nn.Linear(self.encoder.out_dim, num_classes)
        # Natural images are normalised per channel as the Matching Network normalises them (the training
        # classes' statistics); not saved with the encoder: the table normalises with the same split statistics.
        as_buffer = (lambda v: None if v is None else torch.tensor(v, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("input_mean", as_buffer(mean), persistent=False)
        self.register_buffer("input_std", as_buffer(std), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.input_mean is None else (images - self.input_mean) / self.input_std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [0, 1] -> the encoder's features [B, d] (normalised input, as in training)."""
        return self.encoder(self.normalize(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [0, 1] -> logits [B, num_classes]."""
        return self.head(self.features(images))


def train_classifier(cfg: ClassifierConfig, splits: dict[str, FewShotSplit], run_dir: Path,
                     device: torch.device, resume: bool = True, stop_after: int | None = None) -> dict:
    """Cross-entropy over cfg.train_on's classes; best/ = the encoder with the best val 20-way 1-shot NN accuracy."""
    train = splits[cfg.train_on].to(device)
    val = splits["val"].to(device)
    torch.manual_seed(cfg.seed)
    shape = train.images.shape  # [classes, per_class, (C,) H, W]
    model = BaselineClassifier(train.num_classes, cfg.hidden, shape[2] if len(shape) == 5 else 1, shape[-1],
                               train.mean, train.std).to(device)
    generator = torch.Generator(device=device)  # the engine seeds it per rank

    def batch(shard: Shard) -> tuple[torch.Tensor, torch.Tensor]:
        classes = torch.randint(train.num_classes, (shard.size,), device=device, generator=generator)
        drawings = torch.randint(train.per_class, (shard.size,), device=device, generator=generator)
        return classes, drawings

    def loss(net: nn.Module, drawn: tuple[torch.Tensor, torch.Tensor]):
        classes, drawings = drawn
        logits = net(images_of(train, classes, drawings))
        return F.cross_entropy(logits, classes), (logits.argmax(-1) == classes).float().mean()

    info = {"trained_as": "baseline-classifier", "train_split": f"{cfg.split}/{cfg.train_on}",
            "train_classes": train.num_classes, "recipe": vars(cfg),
            **({"input_mean": list(train.mean), "input_std": list(train.std)} if train.mean is not None else {})}
    task = FunctionTask(model, [generator], batch, loss,
                        validate=lambda m: validate_nearest_neighbour(m.features, val, cfg.val_tasks,
                                                                      cfg.val_episodes),
                        save=lambda m, folder: save_encoder(m.encoder, folder, info), global_batch=cfg.batch,
                        batch_key="batch")
    return fit(task, cfg, run_dir, resume=resume, stop_after=stop_after)
