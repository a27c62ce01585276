"""Episodic training (eq. 2): Adam, a learning-rate schedule, periodic validation, best-on-val checkpoints,
resume after a crash, a JSONL log. One loop; speed options (meta-batch, bf16, channels_last, compile) are flags.
"""
from __future__ import annotations

import json
import math
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import (load_state, optimizer_from_flat, optimizer_to_flat, save_model, save_state)
from .data import load_splits
from .episodes import EpisodeSampler
from .evaluate import evaluate, model_predictor
from .model import MatchingNetwork


@dataclass
class TrainConfig:
    name: str = "omniglot-vinyals"
    # data
    dataset: str = "omniglot"
    split: str = "vinyals"  # vinyals | lake
    train_on: str = "train"  # train | trainval (select on val first, then retrain on trainval if wanted)
    data_root: str = "data"
    download: bool = False
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
    meta_batch: int = 1  # episodes per optimizer step
    steps: int = 20000
    # optimizer
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | step | constant
    warmup_steps: int = 0
    # validation on the val classes: [way, shot] tasks; the first one selects the best model
    val_tasks: list = field(default_factory=lambda: [[20, 1]])
    val_every: int = 1000
    val_episodes: int = 500
    val_query: int = 15
    # runtime
    seed: int = 0
    device: str = "auto"  # auto | cuda | cpu
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    compile: bool = False
    log_every: int = 100
    checkpoint_every: int = 1000  # steps between resume points (a crash loses at most this many)
    out_dir: str = ""  # default runs/<name>
    progress: bool = True

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        with open(path, "rb") as f:
            values = tomllib.load(f)
        return cls.from_dict({**values, **overrides}, source=str(path))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {unknown}; known: {sorted(known)}")
        for key, value in values.items():
            want = type(getattr(cls(), key))
            if key == "val_tasks":
                if not value or not all(isinstance(t, list) and len(t) == 2 for t in value):
                    raise ValueError(f"{source}: val_tasks should be a list of [way, shot] pairs, got {value!r}")
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ValueError(f"{source}: {key} should be {want.__name__}, got {value!r}")
            values = {**values, key: value}
        cfg = cls(**values)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule must be cosine, step or constant, not {self.schedule!r}")
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, not {self.device!r}")
        for key in ("way", "shot", "query", "meta_batch", "steps", "val_every", "val_episodes", "log_every",
                    "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    def model(self) -> MatchingNetwork:
        """A fresh, untrained model as configured."""
        return MatchingNetwork(hidden=self.hidden, fce=self.fce, fce_steps=self.fce_steps, scale=self.scale,
                               learn_scale=self.learn_scale)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / cfg.steps))
    if cfg.schedule == "step":  # halve four times over the run
        return cfg.lr * 0.5 ** (4 * step // cfg.steps)
    return cfg.lr


def episode_loss(model: MatchingNetwork, ep, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: mean negative log-likelihood of the query labels; also the number of correct queries."""
    with torch.autocast(ep.query.device.type, dtype=torch.bfloat16, enabled=amp):
        log_probs, _ = model(ep.support, ep.support_labels, ep.query, ep.n_way)
    loss = F.nll_loss(log_probs.flatten(0, 1), ep.query_labels.flatten())
    correct = (log_probs.argmax(-1) == ep.query_labels).sum()
    return loss, correct


def make_step(model: MatchingNetwork, opt: torch.optim.Optimizer, sampler: EpisodeSampler, cfg: TrainConfig):
    """One optimizer step on cfg.meta_batch fresh episodes; returns device tensors (loss, correct, queries).

    The train loop and bench/train_speed.py both call this, so the benchmark times the real step.
    """
    loss_fn = torch.compile(episode_loss) if cfg.compile else episode_loss

    def step(lr: float):
        for group in opt.param_groups:
            group["lr"] = lr
        ep = sampler.sample(cfg.meta_batch)
        loss, correct = loss_fn(model, ep, cfg.amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach(), correct, ep.query_labels.numel()
    return step


def build(cfg: TrainConfig, train_split, device: torch.device):
    """Model, optimizer and sampler as the config says (shared with the benchmark)."""
    torch.manual_seed(cfg.seed)
    model = cfg.model().to(device)
    if cfg.channels_last:
        model.use_channels_last()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           fused=device.type == "cuda")
    sampler = EpisodeSampler(train_split, cfg.way, cfg.shot, cfg.query, seed=cfg.seed)
    return model, opt, sampler


def validate(model: MatchingNetwork, cfg: TrainConfig, val_split) -> dict[str, float]:
    """Accuracy on every val task, on the same seeded episodes each time."""
    out = {}
    for way, shot in cfg.val_tasks:
        acc = evaluate(model_predictor(model, cfg.amp), val_split, way, shot, cfg.val_query, cfg.val_episodes,
                       seed=12345, progress=False)
        out[f"val_{way}w{shot}s"] = acc.mean
    model.train()
    return out


def train(cfg: TrainConfig, splits: dict | None = None, resume: bool = True,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train to cfg.steps (or stop after `stop_after` steps, as a crash would); returns a summary.

    Writes to cfg.run_dir: config.toml-equivalent train_config.json, log.jsonl, last.safetensors (resume
    point), best/ (the best model on validation, a checkpoint folder) and final/.
    """
    t0 = time.perf_counter()  # wall time counts start-up: data, model, compilation
    device = resolve_device(cfg.device)
    if device.type != "cuda":  # bf16 autocast and NHWC are GPU speed-ups; on a CPU they only cost time
        cfg = replace(cfg, amp=False, channels_last=False)
    run = cfg.run_dir
    run.mkdir(parents=True, exist_ok=True)
    (run / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    if splits is None:
        splits = load_splits(cfg.dataset, cfg.split, cfg.data_root, cfg.download)
    train_split = splits[cfg.train_on].to(device)
    val_split = splits["val"].to(device)
    model, opt, sampler = build(cfg, train_split, device)
    step, best, log = 0, -1.0, run / "log.jsonl"
    last = run / "last.safetensors"
    if resume and last.is_file():
        tensors, info = load_state(last)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer_from_flat(opt, tensors, info["optimizer"])
        sampler.generator.set_state(tensors["sampler_rng"])
        step, best = info["step"], info["best"]
        _truncate_log(log, step)
    elif log.exists():
        log.unlink()
    train_step = make_step(model, opt, sampler, cfg)

    def checkpoint() -> None:
        opt_tensors, opt_info = optimizer_to_flat(opt)
        tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()}, **opt_tensors,
                   "sampler_rng": sampler.generator.get_state()}
        save_state(last, tensors, {"step": step, "best": best, "optimizer": opt_info})

    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    loss_sum = torch.zeros((), device=device)
    correct_sum = torch.zeros((), device=device)
    seen, last_log = 0, step
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, unit="step", disable=not cfg.progress)
    model.train()
    while step < end:
        loss, correct, queries = train_step(learning_rate(cfg, step))
        loss_sum += loss  # accumulated on the device: no host sync per step
        correct_sum += correct
        seen += queries
        step += 1
        bar.update(1)
        validate_now = step % cfg.val_every == 0 or step == cfg.steps
        if step % cfg.log_every == 0 or step == end or validate_now:
            n = step - last_log
            last_log = step
            record = {"step": step, "loss": loss_sum.item() / n, "train_acc": 100 * correct_sum.item() / seen,
                      "lr": learning_rate(cfg, step - 1), "scale": float(model.scale.detach())}
            loss_sum.zero_(), correct_sum.zero_()
            seen = 0
            if validate_now:
                accs = validate(model, cfg, val_split)
                record.update(accs)
                first = next(iter(accs.values()))
                if first > best:
                    best = first
                    save_model(model, run / "best")
            record["time"] = time.perf_counter() - t0
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.3f}", best_val=f"{best:.2f}")
        if step % cfg.checkpoint_every == 0 or step == end:
            checkpoint()
    bar.close()
    if step >= cfg.steps:
        save_model(model, run / "final")
    return {"steps": step, "best_val": best, "seconds": time.perf_counter() - t0, "run_dir": str(run)}


def _truncate_log(log: Path, step: int) -> None:
    """Drop log lines written after the resume point: they will be written again."""
    if log.exists():
        lines = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        log.write_text("".join(ln + "\n" for ln in lines))
