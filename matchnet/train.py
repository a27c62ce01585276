"""Episodic training of the image Matching Networks (eq. 2) as a task of the one engine (matchnet.engine):
the config, the model, the episodes, the loss and the validation; the loop itself is the engine's.
Speed options (meta-batch, bf16, channels_last, compile) are flags; bf16 and channels_last apply on CPUs too
(matchnet.cpu says which).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import LoopConfig, check_pairs, check_positive
from .cpu import use_amp
from .data import load_splits
from .data.fewshot import FewShotSplit
from .distributed import current_dist, rank_seed, resolve_device
from .engine import FunctionTask, Shard, TrainingError, fit, learning_rate, run_validation, set_deterministic
from .alphabets import training_sampler
from .episodes import EpisodeSampler
from .evaluate import evaluate, model_predictor
from .model import MatchingNetwork
from .rundir import check_run_name

# Sizes beyond any sensible few-shot run, refused before anything is allocated (a typo such as hidden=10**7
# would otherwise end in an allocation failure deep inside torch).
MAX_PARAMETERS = 10 ** 9
MAX_IMAGES_PER_STEP = 100_000

__all__ = ["TrainConfig", "build", "episode_loss", "learning_rate", "make_step", "resolve_device", "train",
           "validate"]


@dataclass
class TrainConfig(LoopConfig):
    """The image Matching Network's recipe; the loop's own fields (steps, lr, schedule, seed...) are
    matchnet.config.LoopConfig's."""

    name: str = "omniglot-vinyals"
    # data
    dataset: str = "omniglot"  # omniglot | miniimagenet | folder (matchnet.data.load_splits)
    split: str = "vinyals"  # vinyals | lake (omniglot); ravi (miniimagenet)
    train_on: str = "train"  # train | trainval (select on val first, then retrain on trainval if wanted)
    data_root: str = "data"
    download: bool = False
    data_options: dict = field(default_factory=dict)  # passed to the dataset's loader, e.g. image_size = 84
    # model
    fce: bool = False
    fce_steps: int = 5
    scale: float = 30.0  # fixed scale 30 won the scale ablation on validation (docs/RESULTS.md)
    learn_scale: bool = False
    hidden: int = 64
    # training episodes
    way: int = 60
    shot: int = 1
    query: int = 5
    meta_batch: int = 1  # episodes per optimizer step, over all processes (torchrun splits them)
    shuffle_support: bool = True  # S is a set (section 2): FCE's LSTM must not learn the class-by-class order
    within_alphabet: float = 0.0  # fraction of training episodes whose classes come from one alphabet (Omniglot)
    same_drawer: bool = True  # in those, each support/query slot drawn by one drawer for every class, as at test
    augment: bool = False  # Koch et al.'s small affine distortions, on the device (matchnet.augment)
    preprocess: str = "none"  # none | app | mixed: train on images put through the demo's preprocessing (mixed:
    # half the training episodes, the other half as drawn; validation as drawn)
    steps: int = 20000
    # validation on the val classes: [way, shot] tasks; the first one selects the best model
    val_tasks: list = field(default_factory=lambda: [[20, 1]])
    val_episodes: int = 500
    val_query: int = 15
    val_protocol: str = "standard"  # standard | within-alphabet (Lake et al.: one alphabet, two drawers)
    # runtime
    deterministic: bool = False  # torch's deterministic algorithms: same losses run to run (slower on GPUs)
    device: str = "auto"  # auto | cuda | cpu
    channels_last: bool = False
    compile: bool = False
    out_dir: str = ""  # default runs/<name>

    def check(self) -> None:
        """Checks that need no data (the rest: check_against_data, before step 1)."""
        super().check()
        choices = {"device": ("auto", "cuda", "cpu"), "train_on": ("train", "trainval"),
                   "preprocess": ("none", "app", "mixed"), "val_protocol": ("standard", "within-alphabet")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                extra = (" (training on the test classes would make every test number meaningless)"
                         if key == "train_on" and self.train_on == "test" else "")
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}{extra}")
        check_positive(self, "way", "shot", "query", "meta_batch", "val_episodes", "val_query", "hidden",
                       "fce_steps")
        if self.way < 2:
            raise ValueError("way must be at least 2: a 1-way episode has nothing to choose between")
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        check_pairs("val_tasks", self.val_tasks)
        if not 0.0 <= self.within_alphabet <= 1.0:
            raise ValueError(f"within_alphabet is a fraction of episodes, 0 to 1, got {self.within_alphabet}")
        if (self.within_alphabet > 0 or self.val_protocol != "standard" or self.preprocess != "none") and \
                self.dataset != "omniglot":
            raise ValueError("within_alphabet, val_protocol and preprocess are for Omniglot (alphabets, drawings)")
        check_run_name(self.name)
        if not 0 <= self.seed <= 2 ** 63 - 1:  # torch's generators take 64-bit seeds
            raise ValueError(f"seed must be between 0 and 2**63-1, got {self.seed}")
        images = self.meta_batch * self.way * (self.shot + self.query)
        if images > MAX_IMAGES_PER_STEP:
            raise ValueError(f"meta_batch x way x (shot + query) = {images:,} images per step; at most "
                             f"{MAX_IMAGES_PER_STEP:,} are accepted (the shipped recipes use up to 2,880)")
        with torch.device("meta"):  # the architecture without memory, as checkpoints are checked
            params = sum(p.numel() for p in self.model().parameters())
        if params > MAX_PARAMETERS:
            raise ValueError(f"hidden = {self.hidden} gives a model of {params:,} parameters "
                             f"({16 * params / 1e9:,.0f} GB with gradients and Adam's state); at most "
                             f"{MAX_PARAMETERS:,} are accepted (the shipped models have about 10^5): choose a "
                             "smaller hidden")

    def check_against_data(self, splits: dict[str, FewShotSplit]) -> None:
        """Every episode the run will draw must exist: fail now, not at the first validation."""
        train_split, val = splits[self.train_on], splits["val"]
        if self.way > train_split.num_classes:
            raise ValueError(f"way = {self.way} needs {self.way} training classes; {self.train_on} has "
                             f"{train_split.num_classes}")
        if self.shot + self.query > train_split.per_class:
            raise ValueError(f"shot + query = {self.shot + self.query} exceeds the {train_split.per_class} "
                             "examples per class")
        for way, shot in self.val_tasks:
            if self.val_protocol == "within-alphabet":
                from .alphabets import eligible_alphabets, upright

                if not eligible_alphabets(upright(val), way)[0]:
                    raise ValueError(f"val_tasks: no validation alphabet has {way} characters for {way}-way "
                                     "within-alphabet episodes")
            elif way > val.num_classes:
                raise ValueError(f"val_tasks: {way}-way needs {way} classes; val has {val.num_classes}")
            if shot + self.val_query > val.per_class:
                raise ValueError(f"val_tasks: {shot} shots + val_query {self.val_query} exceed the "
                                 f"{val.per_class} examples per class")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    def model(self, split: FewShotSplit | None = None) -> MatchingNetwork:
        """A fresh, untrained model as configured, shaped for `split`'s images (default: 1x28x28 Omniglot)."""
        shape = {}
        if split is not None:
            images = split.images
            channels = images.shape[2] if images.dim() == 5 else 1
            shape = dict(in_channels=channels, image_size=images.shape[-1])
            for key in ("mean", "std"):  # per-channel normalisation of natural images, inside the model
                if getattr(split, key, None) is not None:
                    shape[key] = list(getattr(split, key))
        return MatchingNetwork(hidden=self.hidden, fce=self.fce, fce_steps=self.fce_steps, scale=self.scale,
                               learn_scale=self.learn_scale, **shape)


def episode_loss(model: torch.nn.Module, ep, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: mean negative log-likelihood of the query labels; also the number of correct queries."""
    with torch.autocast(ep.query.device.type, dtype=torch.bfloat16, enabled=amp):
        log_probs, _ = model(ep.support, ep.support_labels, ep.query, ep.n_way)
    loss = F.nll_loss(log_probs.flatten(0, 1), ep.query_labels.flatten())
    correct = (log_probs.argmax(-1) == ep.query_labels).sum()
    return loss, correct


def make_step(model: MatchingNetwork, opt: torch.optim.Optimizer, sampler: EpisodeSampler, cfg: TrainConfig):
    """One optimizer step on cfg.meta_batch fresh episodes, outside the engine (bench/train_speed.py times it).

    The step is the engine's (task.loss + Adam) without its bookkeeping; returns (loss, correct, queries).
    """
    task = matching_task(model, sampler, cfg, val_split=None)

    def step(lr: float):
        for group in opt.param_groups:
            group["lr"] = lr
        ep = task.batch(Shard(size=cfg.meta_batch))
        loss, acc = task.loss(model, ep)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach(), acc * ep.query_labels.numel(), ep.query_labels.numel()
    return step


def build(cfg: TrainConfig, train_split: FewShotSplit, device: torch.device, rank: int = 0,
          processed: FewShotSplit | None = None):
    """Model, optimizer and sampler as the config says (shared with the benchmark). `processed`: train_split
    through the demo's preprocessing, for preprocess = "mixed"."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = cfg.model(train_split).to(device)
    if cfg.channels_last:
        model.use_channels_last()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           fused=device.type == "cuda")
    # Only FCE reads the support set in order; for the others a shuffle would change nothing but the stream.
    # With within_alphabet = 0 and no augmentation this is the plain EpisodeSampler (the same stream as ever).
    sampler = training_sampler(train_split, cfg.way, cfg.shot, cfg.query, seed=rank_seed(cfg.seed, rank),
                               within_alphabet=cfg.within_alphabet, same_drawer=cfg.same_drawer,
                               augment=cfg.augment, shuffle_support=cfg.shuffle_support and cfg.fce,
                               processed=processed)
    return model, opt, sampler


def eval_batch(device: torch.device) -> int:
    """Episodes per forward pass when scoring: 50 on a GPU; 10 on a CPU, where 50 20-way episodes (16,000
    images) would hold 3 GB of first-layer activations and the same episodes give the same scores."""
    return 50 if device.type == "cuda" else 10


def validate(model: MatchingNetwork, cfg: TrainConfig, val_split: FewShotSplit) -> dict[str, float]:
    """Accuracy on every val task, on the same seeded episodes each time, in eval mode (BatchNorm's running
    statistics are used and left unchanged; the model's mode is restored after)."""
    def scores(m: torch.nn.Module) -> dict[str, float]:
        out = {}
        for way, shot in cfg.val_tasks:
            predict = model_predictor(m, cfg.amp)
            if cfg.val_protocol == "within-alphabet":  # as Lake's test: one query per class
                from .alphabets import evaluate_within_alphabet, upright

                acc = evaluate_within_alphabet(predict, upright(val_split), way, shot, 1, cfg.val_episodes,
                                               seed=12345, progress=False)
            else:
                acc = evaluate(predict, val_split, way, shot, cfg.val_query, cfg.val_episodes, seed=12345,
                               progress=False, batch=eval_batch(val_split.images.device))
            out[f"val_{way}w{shot}s"] = acc.mean
        return out
    return run_validation(model, scores)


def matching_task(model: MatchingNetwork, sampler: EpisodeSampler, cfg: TrainConfig,
                  val_split: FewShotSplit | None) -> FunctionTask:
    """The Matching Network as an engine task: episodes from `sampler` (cfg.meta_batch over all ranks), eq. 2's
    loss, val accuracy."""
    from .checkpoint import save_model

    loss_fn = torch.compile(episode_loss) if cfg.compile else episode_loss

    def loss(net: torch.nn.Module, ep) -> tuple[torch.Tensor, torch.Tensor]:
        value, correct = loss_fn(net, ep, cfg.amp)
        return value, correct / ep.query_labels.numel()

    return FunctionTask(
        model=model, generators=[sampler.generator], batch=lambda shard: sampler.sample(shard.size), loss=loss,
        validate=lambda m: validate(m, cfg, val_split),
        save=lambda m, folder: save_model(m, folder),
        log_extras=lambda m: {"scale": float(m.scale.detach())}, global_batch=cfg.meta_batch,
    )


def train(cfg: TrainConfig, splits: dict | None = None, resume: bool = True,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train to cfg.steps (or stop after `stop_after` steps, as a crash would); returns a summary.

    Writes to cfg.run_dir (rank 0): train_config.json, run.json, log.jsonl, last.safetensors (resume point),
    best/ (the best model on validation, a checkpoint folder) and final/. Under torchrun, each of the N
    processes draws cfg.meta_batch / N episodes per step.
    """
    t0 = time.perf_counter()  # wall time counts start-up: data, model, compilation
    dist = current_dist()
    device = resolve_device(cfg.device, dist)
    # bf16 autocast where the hardware has bf16 units (CUDA; AVX512-BF16/AMX CPUs), else fp32; NHWC everywhere
    # (on a CPU too: oneDNN's convolutions are 1.5-2x faster in NHWC, docs/BENCHMARKS.md)
    cfg = replace(cfg, amp=use_amp(cfg.amp, device))
    if cfg.meta_batch % dist.world:
        raise TrainingError(f"meta_batch = {cfg.meta_batch} episodes per step cannot be split evenly over "
                            f"{dist.world} processes; choose a multiple of {dist.world}")
    set_deterministic(cfg.deterministic)
    if splits is None:
        splits = load_splits(cfg.dataset, cfg.split, cfg.data_root, cfg.download, **cfg.data_options)
    processed = None
    if cfg.preprocess != "none":  # the demo's drawing preprocessing (~100 s of CPU)
        from .augment import with_app_preprocessing

        if cfg.preprocess == "app":  # every image through it
            splits = with_app_preprocessing(splits)
        else:  # "mixed": a preprocessed copy of the training split beside the drawn one
            processed = with_app_preprocessing({"t": splits[cfg.train_on]})["t"].to(device)
    cfg.check_against_data(splits)
    train_split = splits[cfg.train_on].to(device)
    val_split = splits["val"].to(device)
    model, _, sampler = build(cfg, train_split, device, dist.rank, processed)
    task = matching_task(model, sampler, cfg, val_split)
    return fit(task, cfg, cfg.run_dir, resume=resume, stop_after=stop_after, started=t0)
