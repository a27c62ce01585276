"""Episodic training (eq. 2) of Matching Networks on sentences, as a task of the one engine (matchnet.engine),
and their evaluation with 95% intervals through matchnet.evaluate.accuracy.

The classifier is matchnet.model.MatchingClassifier, the one the image models use, with a SentenceEncoder
plugged in; the loss is matchnet.train.episode_loss.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..atomic import write_text, write_with
from ..config import LoopConfig, check_positive
from ..engine import FunctionTask, Shard, fit
from ..episodes import Episodes
from ..evaluate import Accuracy, Predictor, accuracy
from ..model import MatchingClassifier
from ..train import episode_loss
from .encoder import KINDS, SentenceEncoder
from .episodes import SentenceEpisodeSampler, SentencePool, evaluation_episodes


@dataclass
class SentenceConfig(LoopConfig):
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
    meta_batch: int = 8  # episodes per step over all processes
    steps: int = 5000
    warmup_steps: int = 100
    # validation: `val_way`-way `val_shot`-shot episodes of validation words in ptb.valid.txt; picks the best model
    val_way: int = 5
    val_shot: int = 1
    val_every: int = 500
    val_episodes: int = 500
    log_every: int = 500
    checkpoint_every: int = 500

    def check(self) -> None:
        super().check()
        if self.encoder not in KINDS:
            raise ValueError(f"encoder must be one of {', '.join(KINDS)}, not {self.encoder!r}")
        if not self.shots or not all(isinstance(k, int) and k >= 1 for k in self.shots):
            raise ValueError(f"shots should be a list of support sizes per word, e.g. [1, 2, 3], got {self.shots!r}")
        check_positive(self, "embed_dim", "hidden", "layers", "way", "query", "meta_batch", "val_way",
                       "val_shot", "val_episodes")
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")

    def model(self, vocab_size: int) -> MatchingClassifier:
        encoder = SentenceEncoder(vocab_size, self.encoder, self.embed_dim, self.hidden, self.layers, self.dropout)
        return MatchingClassifier(encoder, self.fce, self.fce_steps, self.scale, self.learn_scale)


def evaluate(predict: Predictor | torch.nn.Module, pool: SentencePool, way: int, shot: int, query: int,
             episodes: int, seed: int, batch: int = 50, progress: bool = True, desc: str = "eval",
             device: torch.device | str = "cpu") -> Accuracy:
    """Mean per-episode accuracy (%) over `episodes` seeded episodes, ± the 95% interval's half-width.

    The episodes depend on the seed only (drawn on the host), so every predictor and device sees the same ones.
    """
    batches = evaluation_episodes(pool, way, shot, query, episodes, seed, batch)
    return accuracy(predict, batches, way, shot, query, episodes, seed, batch, progress, desc, device)


def to_device(ep: Episodes, device: torch.device | str) -> Episodes:
    return Episodes(ep.support.to(device), ep.support_labels.to(device), ep.query.to(device),
                    ep.query_labels.to(device), ep.classes, ep.n_way)


def save(model: MatchingClassifier, cfg: SentenceConfig, vocab_size: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_with(folder / "model.safetensors", lambda p: save_file(state, p))  # each file whole or not at all
    write_text(folder / "config.json", json.dumps({**asdict(cfg), "vocab_size": vocab_size}, indent=2) + "\n")


def load(folder: Path) -> tuple[MatchingClassifier, SentenceConfig]:
    info = json.loads((folder / "config.json").read_text())
    vocab_size = info.pop("vocab_size")
    known = set(SentenceConfig.__dataclass_fields__)
    cfg = SentenceConfig(**{k: v for k, v in info.items() if k in known})  # older folders lack the loop keys
    model = cfg.model(vocab_size)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), cfg


class RandomState:
    """A Python random.Random seen as a torch generator (get_state/set_state), so the engine can save it."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def get_state(self) -> torch.Tensor:
        version, internal, _ = self.rng.getstate()  # the samplers never draw Gaussians: gauss_next stays None
        return torch.tensor([version, *internal], dtype=torch.int64)

    def set_state(self, state: torch.Tensor) -> None:
        values = state.tolist()
        self.rng.setstate((values[0], tuple(values[1:]), None))

    def manual_seed(self, seed: int) -> "RandomState":
        self.rng.seed(seed)
        return self


def train(cfg: SentenceConfig, vocab_size: int, train_pool: SentencePool, valid_pool: SentencePool,
          run_dir: Path, device: torch.device | str = "cpu", progress: bool = True,
          resume: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Adam on eq. 2 through the engine; validation every cfg.val_every steps; writes run_dir/{log.jsonl, best/,
    final/, last.safetensors}. Under torchrun each rank draws its share of cfg.meta_batch episodes."""
    torch.manual_seed(cfg.seed)
    model = cfg.model(vocab_size).to(device)
    sampler = SentenceEpisodeSampler(train_pool, cfg.way, cfg.shots, cfg.query)  # the engine seeds it per rank

    def loss(net: torch.nn.Module, ep: Episodes) -> tuple[torch.Tensor, torch.Tensor]:
        value, correct = episode_loss(net, ep, amp=False)
        return value, correct / ep.query_labels.numel()

    def validate(m: torch.nn.Module) -> dict[str, float]:
        acc = evaluate(m, valid_pool, cfg.val_way, cfg.val_shot, cfg.query, cfg.val_episodes, seed=12345,
                       progress=False, device=device)
        return {"val_acc": acc.mean}

    task = FunctionTask(model, [RandomState(sampler.rng)],
                        lambda shard: to_device(sampler.sample(shard.size), device), loss, validate,
                        save=lambda m, folder: save(m, cfg, vocab_size, folder), global_batch=cfg.meta_batch)
    if not progress:
        cfg = replace(cfg, progress=False)
    return fit(task, cfg, run_dir, resume=resume, stop_after=stop_after)
