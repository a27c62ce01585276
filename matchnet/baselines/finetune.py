"""Fine-tuning on the support set S' only (Table 1's "Fine Tune: Y" rows), batched across episodes.

For each test episode, a copy of the network's last `blocks` Conv-4 blocks (the rest stays frozen; its output
is computed once per image, see features.py) and a small N-way head are trained for a few Adam steps on the
N*k labelled support examples, the only labelled data of the episode; then the episode's queries are
classified. Query labels are never passed in (FeatureEpisodes has none), and queries do not take part in the
fine-tuning, so no query affects another query's prediction.

Heads (the two "Matching Fn" of Table 1):
  cosine:  logits = scale * cos(f(x), w_c), w_c initialised at the normalised mean support feature of class c
           (so step 0 is exactly cosine matching). The head only drives the fine-tuning: queries are then
           classified by the row's own matching function (nearest neighbour, or the Matching Network's
           attention) on the fine-tuned features.
  softmax: logits = W f(x) + b with W = 0, b = 0 at step 0: "a small softmax trained on the small training
           set"; queries are classified by that softmax.

Episodes are fine-tuned E at a time: every parameter gets a leading episode axis and torch.func.vmap runs the
per-episode network. The loss is the sum of the per-episode losses, so episode e's gradient only reaches
episode e's copy, and Adam (elementwise) updates each copy as if it were alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..evaluate import COLUMNS, TEST_QUERY
from ..model import Conv4, MatchingNetwork
from .features import (VAL_SEED, FeatureEpisodes, FeaturePredictor, class_mask, column_seed, feature_episodes,
                       nearest_neighbour_log_probs)

# (support features, support labels, query features, n_way) -> log-probabilities [E, Q, N]
MatchFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class FinetuneConfig:
    blocks: int = 1  # Conv-4 blocks tuned, counted from the top (1..4); the others are frozen
    lrs: list = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])  # Adam learning rates tried on val
    softmax_head_lr: float = 0.01  # the zero-initialised softmax head's own rate (it must move far, the body not)
    steps: list = field(default_factory=lambda: [1, 3, 10, 30])  # step counts tried on val (one run records all)
    scale: float = 10.0  # the cosine head's softmax scale during fine-tuning
    val_episodes: int = 300  # validation episodes per column and learning rate
    batch: int = 100  # episodes fine-tuned at once

    def check(self) -> None:
        if not 1 <= self.blocks <= 4:
            raise ValueError("blocks must be between 1 and 4")
        if not self.lrs or not all(isinstance(x, float) and x > 0 for x in self.lrs):
            raise ValueError("lrs should be a list of positive floats")
        if not self.steps or not all(isinstance(x, int) and x >= 1 for x in self.steps):
            raise ValueError("steps should be a list of step counts >= 1")


def split_encoder(encoder: Conv4, blocks: int) -> tuple[nn.Module, nn.Module]:
    """(frozen bottom, tuned top + flatten): Conv-4's last `blocks` blocks are fine-tuned, in eval mode."""
    layers = list(encoder.net)
    frozen = nn.Sequential(*layers[:len(layers) - blocks]).eval()
    tuned = nn.Sequential(*layers[len(layers) - blocks:], nn.Flatten()).eval()
    return frozen, tuned


def nearest_neighbour_match(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                            n_way: int) -> torch.Tensor:
    return nearest_neighbour_log_probs(support, labels, query, n_way)


def matching_net_match(model: MatchingNetwork) -> MatchFn:
    """The Matching Network's own classifier (eq. 1) on given embeddings."""
    def match(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_way: int) -> torch.Tensor:
        s = model.embed_support(None, labels, n_way, features=support)
        return model.classify(s, features=query)[0]
    return match


def finetune_episodes(tuned: nn.Module, ep: FeatureEpisodes, head: str, lr: float, record: list[int],
                      match: MatchFn = nearest_neighbour_match, scale: float = 10.0,
                      head_lr: float | None = None) -> dict[int, torch.Tensor]:
    """Fine-tune a copy of `tuned` (+ head) per episode on its support set; log-probabilities of the queries
    [E, Q, N] after each step count in `record` (0 = before any step). The head learns at head_lr (default lr)."""
    if head not in ("cosine", "softmax"):
        raise ValueError(f"head must be 'cosine' or 'softmax', not {head!r}")
    e, n = ep.support.shape[0], ep.n_way
    # Inputs are constants here: the frozen part is never trained, whether or not the caller tracks gradients.
    ep = FeatureEpisodes(ep.support.detach(), ep.support_labels, ep.query.detach(), n)
    buffers = dict(tuned.named_buffers())  # BatchNorm running statistics: shared, not tuned
    params = {k: v.detach().unsqueeze(0).repeat(e, *([1] * v.dim())).requires_grad_()
              for k, v in tuned.named_parameters()}
    embed = vmap(lambda p, x: functional_call(tuned, (p, buffers), (x,)))  # per-episode weights
    onehot = class_mask(ep.support_labels, n).float()  # [E, N, S]
    with torch.enable_grad():  # evaluation runs under no_grad; fine-tuning needs gradients
        with torch.no_grad():
            start = embed(params, ep.support)  # [E, S, d]
        if head == "cosine":
            means = onehot @ F.normalize(start, dim=-1) / onehot.sum(-1, keepdim=True)
            w = F.normalize(means, dim=-1).requires_grad_()
            bias = None
        else:
            w = torch.zeros(e, n, start.shape[-1], device=start.device, requires_grad=True)
            bias = torch.zeros(e, n, device=start.device, requires_grad=True)
        head_params = [w] + ([bias] if bias is not None else [])
        opt = torch.optim.Adam([{"params": list(params.values())},
                                {"params": head_params, "lr": lr if head_lr is None else head_lr}], lr=lr)

        def logits(features: torch.Tensor) -> torch.Tensor:
            if head == "cosine":
                return scale * F.normalize(features, dim=-1) @ F.normalize(w, dim=-1).transpose(1, 2)
            return features @ w.transpose(1, 2) + bias.unsqueeze(1)

        out = {}
        for step in range(max(record) + 1):
            if step in record:
                with torch.no_grad():
                    if head == "cosine":
                        out[step] = match(embed(params, ep.support), ep.support_labels, embed(params, ep.query), n)
                    else:
                        out[step] = torch.log_softmax(logits(embed(params, ep.query)), dim=-1)
            if step == max(record):
                break
            loss = F.cross_entropy(logits(embed(params, ep.support)).flatten(0, 1), ep.support_labels.flatten(),
                                   reduction="none").view(e, -1).mean(1).sum()  # sum: episodes independent
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return out


def finetune_predictor(tuned: nn.Module, head: str, lr: float, steps: int, match: MatchFn = nearest_neighbour_match,
                       scale: float = 10.0, head_lr: float | None = None) -> FeaturePredictor:
    """A FeaturePredictor (on the frozen part's features) that fine-tunes `steps` steps per episode."""
    def predict(ep: FeatureEpisodes) -> torch.Tensor:
        return finetune_episodes(tuned, ep, head, lr, [steps], match, scale, head_lr)[steps]
    return predict


def head_lr(cfg: FinetuneConfig, head: str) -> float | None:
    """The head's learning rate: its own for the zero-initialised softmax head, the body's for the cosine head."""
    return cfg.softmax_head_lr if head == "softmax" else None


def select_on_validation(tuned: nn.Module, val_table: torch.Tensor, head: str, cfg: FinetuneConfig,
                         match: MatchFn = nearest_neighbour_match, columns=COLUMNS) -> dict[str, dict]:
    """For each column, the (learning rate, steps) with the best validation accuracy, and every value tried.

    Validation episodes: cfg.val_episodes per column from the val classes, seed VAL_SEED + 1000 x column. One
    fine-tuning run per learning rate scores every step count in cfg.steps (and 0) on the same episodes.
    Ties go to fewer steps.
    """
    chosen = {}
    record = sorted(set(cfg.steps) | {0})
    for i, (way, shot) in enumerate(columns):
        curves = {lr: step_curve(val_table, way, shot, cfg.val_episodes, column_seed(VAL_SEED, i), cfg.batch,
                                 lambda ep, lr=lr: finetune_episodes(tuned, ep, head, lr, record, match, cfg.scale,
                                                                     head_lr(cfg, head)))
                  for lr in cfg.lrs}
        lr, steps = max(((lr, k) for lr in cfg.lrs for k in cfg.steps),
                        key=lambda lk: (curves[lk[0]][lk[1]], -lk[1]))
        chosen[f"{way}w{shot}s"] = {
            "lr": lr, "steps": steps, "val_acc": round(curves[lr][steps], 2),
            "tried": {str(lr): {str(k): round(v, 2) for k, v in c.items()} for lr, c in curves.items()},
        }
    return chosen


@torch.no_grad()
def step_curve(table: torch.Tensor, way: int, shot: int, episodes: int, seed: int, batch: int,
               run: Callable[[FeatureEpisodes], dict[int, torch.Tensor]]) -> dict[int, float]:
    """Mean accuracy (%) after each recorded step count, all on the same seeded episodes."""
    correct: dict[int, list[torch.Tensor]] = {}
    for ep, query_labels in feature_episodes(table, way, shot, TEST_QUERY, episodes, seed, batch):
        for k, log_probs in run(ep).items():
            correct.setdefault(k, []).append((log_probs.argmax(-1) == query_labels).float().mean(1).cpu())
    return {k: 100 * torch.cat(v).mean().item() for k, v in correct.items()}
