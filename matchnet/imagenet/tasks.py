"""Table 3's two training stages as tasks of the one engine (matchnet.engine.fit): the loop, DDP, AMP, the
resume point, best/ and final/ are the engine's. Everything task-specific for ImageNet is in this file.

Stage 1, the classifier: cross-entropy over the training classes (≠L, or all 1,000 for the Oracle), batches
streamed from train/ and sharded over ranks; best/ by 5-way 1-shot nearest-neighbour accuracy on images held
out of train/ (never the test images).
Stage 2, Matching Nets + FCE: f' = g' = the classifier's backbone (its pooled features), FCE on top, trained on
5-way 1-shot episodes of ≠L drawn from the class folders; best/ by the same held-out 5-way 1-shot accuracy.

Per-rank data: a rank's batches and episodes are fixed by (seed, rank, world, step) (matchnet.imagenet.data):
every rank uses the config's seed and takes its own shard of the step the engine asks for (Shard.step), so
the streams need no generator of their own (the engine's rank seeding has nothing to seed here).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..baselines.store import load_weights, read_meta, save_weights
from ..config import LoopConfig, check_positive
from ..distributed import current_dist, resolve_device
from ..engine import FunctionTask, TrainingError, fit
from ..model import MatchingClassifier
from ..train import episode_loss
from .backbones import ARCHS, IMAGE_SIZE, Classifier, load_local_weights
from .data import EpisodeStream, ImageStream, holdout, select, train_files
from .evaluate import feature_table, matching_accuracy, nearest_neighbour_accuracy

CLASSIFIER, MATCHNET = "imagenet-classifier", "imagenet-matchnet"
VAL_SEED = 12345


@dataclass
class StageConfig(LoopConfig):
    """What both stages share (the loop's fields: LoopConfig); the defaults are the full-size recipe
    (train/configs/imagenet_*.toml)."""

    name: str = "imagenet"
    arch: str = "inception_v3"  # inception_v3 (the paper's) | resnet50 | tiny (tests)
    hidden: int = 32  # width of the tiny backbone only
    image_size: int = 0  # 0: the architecture's own (299 Inception-v3, 224 ResNet-50)
    workers: int = 8  # DataLoader decoding processes per rank
    val_per_class: int = 10  # train/ images per class held out to choose the checkpoint on
    val_episodes: int = 500
    amp: bool = True  # bf16 autocast (GPUs only)
    channels_last: bool = True  # NHWC convolutions (GPUs only)
    device: str = "auto"

    def check(self) -> None:
        super().check()
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {self.arch!r}")
        check_positive(self, "val_per_class", "val_episodes")
        if self.workers < 0:
            raise ValueError(f"workers cannot be negative, got {self.workers}")

    @property
    def size(self) -> int:
        return self.image_size or IMAGE_SIZE.get(self.arch, 32)


@dataclass
class ClassifierConfig(StageConfig):
    name: str = "imagenet-classifier"
    batch: int = 256  # images per step over all ranks
    label_smoothing: float = 0.0
    weights: str = ""  # a local .safetensors to start from (nothing is downloaded)

    def check(self) -> None:
        super().check()
        check_positive(self, "batch")


@dataclass
class MatchingConfig(StageConfig):
    name: str = "imagenet-matchnet"
    way: int = 5
    shot: int = 1
    query: int = 5  # queries per class in a training episode
    meta_batch: int = 32  # episodes per step over all ranks
    fce: bool = True
    fce_steps: int = 5
    scale: float = 30.0

    def check(self) -> None:
        super().check()
        check_positive(self, "way", "shot", "query", "meta_batch", "fce_steps")


def _runtime(cfg: StageConfig, share: int, what: str) -> tuple[StageConfig, torch.device, Any]:
    dist = current_dist()
    device = resolve_device(cfg.device, dist)
    if device.type != "cuda":  # bf16 autocast and NHWC are GPU speed-ups; on a CPU they only cost time
        cfg = replace(cfg, amp=False, channels_last=False)
    if share % dist.world:
        raise TrainingError(f"{what} = {share} cannot be split evenly over {dist.world} processes; "
                            f"choose a multiple of {dist.world}")
    return cfg, device, dist


def _validation(files: dict[str, list[Path]], cfg: StageConfig, device: torch.device):
    """5-way 1-shot accuracy of an encoder on the held-out train/ images (the first metric selects best/)."""
    def run(encode, accuracy) -> dict[str, float]:
        table = feature_table(encode, files, cfg.size, cfg.workers, device)
        query = min(15, table.shape[1] - 1)  # readable held-out images per class, less the shot
        return {"val_5w1s": accuracy(table, 5, 1, query, cfg.val_episodes, VAL_SEED).mean}
    return run


def train_classifier(cfg: ClassifierConfig, root: str | Path, classes: list[str], run_dir: str | Path,
                     resume: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Stage 1 on `classes` (≠L, or all 1,000 for the Oracle): writes run_dir/{best,final}/ (kind
    imagenet-classifier, the class list in its config) and the engine's resume point and log."""
    cfg, device, dist = _runtime(cfg, cfg.batch, "batch")
    files = select(train_files(root), classes, f"{root}/train")
    train, val = holdout(files, cfg.val_per_class)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = Classifier(cfg.arch, len(classes), cfg.hidden)
    if cfg.weights:
        left = load_local_weights(model, cfg.weights)
        if dist.is_main:
            print(f"started from {cfg.weights}; left at their initial values: {left or 'none'}", flush=True)
    model = model.to(device)
    if cfg.channels_last:
        model.backbone.use_channels_last()
    stream = ImageStream(train, classes, cfg.size, cfg.batch // dist.world, cfg.seed, dist.rank, dist.world,
                         cfg.workers, device)
    config = {"arch": cfg.arch, "num_classes": len(classes), "hidden": cfg.hidden, "image_size": cfg.size,
              "transform_input": _transform_input(model.backbone), "classes": classes}

    def loss(net, batch):
        images, labels = batch
        logits = net(images)
        return (F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing),
                (logits.argmax(-1) == labels).float().mean())

    validate = _validation(val, cfg, device)
    task = FunctionTask(model, [], lambda shard: stream.next(shard.step), loss,
                        validate=lambda m: validate(m.backbone, nearest_neighbour_accuracy),
                        save=lambda m, folder: save_weights(m, folder, CLASSIFIER, config),
                        global_batch=cfg.batch, batch_key="batch")
    return fit(task, cfg, run_dir, resume=resume, stop_after=stop_after)


def _transform_input(backbone) -> bool:
    """Inception-v3 started from torchvision's weights rescales its input as they expect (backbones.py)."""
    return bool(getattr(backbone.body, "transform_input", False))


def _backbone_from(c: dict, num_classes: int) -> Classifier:
    model = Classifier(c["arch"], num_classes, c["hidden"])
    if c.get("transform_input"):
        model.backbone.body.transform_input = True
    return model


def load_classifier(folder: str | Path, device: torch.device | str = "cpu") -> tuple[Classifier, dict]:
    c = read_meta(folder)["config"]
    return load_weights(_backbone_from(c, c["num_classes"]), folder, CLASSIFIER, device), c


def matching_model(cfg: MatchingConfig, classifier: Classifier) -> MatchingClassifier:
    """Matching Nets with f' = g' = the classifier's backbone (initialised from it) and FCE on its features."""
    return MatchingClassifier(classifier.backbone, fce=cfg.fce, fce_steps=cfg.fce_steps, scale=cfg.scale)


def train_matchnet(cfg: MatchingConfig, root: str | Path, classes: list[str], classifier_folder: str | Path,
                   run_dir: str | Path, resume: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Stage 2 on episodes of `classes` (≠L), f and g initialised from stage 1's best/."""
    cfg, device, dist = _runtime(cfg, cfg.meta_batch, "meta_batch")
    files = select(train_files(root), classes, f"{root}/train")
    train, val = holdout(files, cfg.val_per_class)
    classifier, meta = load_classifier(classifier_folder, "cpu")
    torch.manual_seed(cfg.seed)  # FCE's initial weights, the same on every rank
    model = matching_model(cfg, classifier).to(device).train()
    if cfg.channels_last:
        model.encoder.use_channels_last()
    size = meta["image_size"]
    stream = EpisodeStream(train, cfg.way, cfg.shot, cfg.query, size, cfg.meta_batch // dist.world, cfg.seed,
                           dist.rank, dist.world, cfg.workers, device)
    config = {"arch": meta["arch"], "hidden": meta["hidden"], "image_size": size,
              "transform_input": meta.get("transform_input", False), "fce": cfg.fce,
              "fce_steps": cfg.fce_steps, "scale": cfg.scale, "classifier": str(classifier_folder)}

    def loss(net, ep):
        value, correct = episode_loss(net, ep, False)  # the engine's autocast covers the forward pass
        return value, correct / ep.query_labels.numel()

    validate = _validation(val, replace(cfg, image_size=size), device)
    task = FunctionTask(model, [], lambda shard: stream.next(shard.step), loss,
                        validate=lambda m: validate(m.encoder, lambda t, *a: matching_accuracy(m, t, *a)),
                        save=lambda m, folder: save_weights(m, folder, MATCHNET, config),
                        global_batch=cfg.meta_batch)
    return fit(task, cfg, run_dir, resume=resume, stop_after=stop_after)


def load_matchnet(folder: str | Path, device: torch.device | str = "cpu") -> tuple[MatchingClassifier, dict]:
    c = read_meta(folder)["config"]
    model = MatchingClassifier(_backbone_from(c, 1).backbone, fce=c["fce"],
                               fce_steps=c["fce_steps"], scale=c["scale"])
    return load_weights(model, folder, MATCHNET, device), c
