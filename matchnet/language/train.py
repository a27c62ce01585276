"""Episodic training (eq. 2) of Matching Networks on sentences, and their evaluation with 95% intervals.

The classifier is matchnet.model.MatchingClassifier, the one the image models use, with a SentenceEncoder
plugged in; the loss is matchnet.train.episode_loss and the accuracy bookkeeping matchnet.evaluate's.
"""
from __future__ import annotations

import json
import math
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..episodes import Episodes
from ..evaluate import Accuracy, Predictor, mean_ci95, model_predictor
from ..model import MatchingClassifier
from ..train import episode_loss, learning_rate
from .encoder import SentenceEncoder
from .episodes import SentenceEpisodeSampler, SentencePool, evaluation_episodes


@dataclass
class SentenceConfig:
    name: str = "ptb-bilstm-blank"
    # encoder (matchnet.language.encoder)
    encoder: str = "bilstm-blank"
    embed_dim: int = 128
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.0
    # classifier (matchnet.model.MatchingClassifier)
    fce: bool = False
    fce_steps: int = 5
    scale: float = 30.0
    learn_scale: bool = False
    # training episodes: each step draws its k from `shots`, so one model serves every test column
    way: int = 5
    shots: list = field(default_factory=lambda: [1, 2, 3])
    query: int = 4  # per label word: 5 x 4 = the paper's batch of 20
    meta_batch: int = 8
    steps: int = 5000
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"  # read by matchnet.train.learning_rate
    warmup_steps: int = 100
    # validation: `val_way`-way `val_shot`-shot episodes of validation words in ptb.valid.txt; picks the best model
    val_way: int = 5
    val_shot: int = 1
    val_every: int = 500
    val_episodes: int = 500
    seed: int = 0

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "SentenceConfig":
        with open(path, "rb") as f:
            values = {**tomllib.load(f), **overrides}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def model(self, vocab_size: int) -> MatchingClassifier:
        encoder = SentenceEncoder(vocab_size, self.encoder, self.embed_dim, self.hidden, self.layers, self.dropout)
        return MatchingClassifier(encoder, self.fce, self.fce_steps, self.scale, self.learn_scale)


@torch.no_grad()
def evaluate(predict: Predictor | torch.nn.Module, pool: SentencePool, way: int, shot: int, query: int,
             episodes: int, seed: int, batch: int = 50, progress: bool = True, desc: str = "eval",
             device: torch.device | str = "cpu") -> Accuracy:
    """Mean per-episode accuracy (%) over `episodes` seeded episodes, ± the 95% interval's half-width.

    The episodes depend on the seed only (drawn on the host), so every predictor and device sees the same ones.
    """
    if isinstance(predict, torch.nn.Module):
        predict.eval()
        predict = model_predictor(predict)
    accs = []
    for ep in tqdm(evaluation_episodes(pool, way, shot, query, episodes, seed, batch),
                   total=math.ceil(episodes / batch), desc=f"{desc} {way}w{shot}s", leave=False,
                   disable=not progress):
        ep = to_device(ep, device)
        accs.append((predict(ep).argmax(-1) == ep.query_labels).float().mean(1).cpu())
    mean, ci = mean_ci95(torch.cat(accs))
    return Accuracy(way, shot, query, episodes, seed, 100 * mean, 100 * ci)


def to_device(ep: Episodes, device: torch.device | str) -> Episodes:
    return Episodes(ep.support.to(device), ep.support_labels.to(device), ep.query.to(device),
                    ep.query_labels.to(device), ep.classes, ep.n_way)


def save(model: MatchingClassifier, cfg: SentenceConfig, vocab_size: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**asdict(cfg), "vocab_size": vocab_size}, indent=2) + "\n")


def load(folder: Path) -> tuple[MatchingClassifier, SentenceConfig]:
    info = json.loads((folder / "config.json").read_text())
    vocab_size = info.pop("vocab_size")
    cfg = SentenceConfig(**info)
    model = cfg.model(vocab_size)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), cfg


def train(cfg: SentenceConfig, vocab_size: int, train_pool: SentencePool, valid_pool: SentencePool,
          run_dir: Path, device: torch.device | str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Adam on eq. 2; validation every cfg.val_every steps; writes run_dir/{log.jsonl, best/, final/}."""
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = cfg.model(vocab_size).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = SentenceEpisodeSampler(train_pool, cfg.way, cfg.shots, cfg.query, seed=cfg.seed)
    log = run_dir / "log.jsonl"
    log.unlink(missing_ok=True)
    best, loss_sum, correct, seen = -1.0, 0.0, 0, 0
    bar = tqdm(range(1, cfg.steps + 1), desc=cfg.name, unit="step", disable=not progress)
    model.train()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step - 1)
        ep = to_device(sampler.sample(cfg.meta_batch), device)
        loss, right = episode_loss(model, ep, amp=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum, correct, seen = loss_sum + loss.item(), correct + int(right), seen + ep.query_labels.numel()
        if step % cfg.val_every == 0 or step == cfg.steps:
            val = evaluate(model, valid_pool, cfg.val_way, cfg.val_shot, cfg.query, cfg.val_episodes, seed=12345,
                           progress=False, device=device).mean
            model.train()
            record = {"step": step, "loss": loss_sum / cfg.val_every, "train_acc": 100 * correct / seen,
                      "val_acc": val, "time": round(time.perf_counter() - t0, 1)}
            loss_sum, correct, seen = 0.0, 0, 0
            if val > best:
                best = val
                save(model, cfg, vocab_size, run_dir / "best")
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{val:.1f}", best=f"{best:.1f}")
    save(model, cfg, vocab_size, run_dir / "final")
    return {"steps": cfg.steps, "best_val": best, "seconds": round(time.perf_counter() - t0, 1)}
