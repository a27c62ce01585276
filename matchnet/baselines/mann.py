"""MANN (no conv): Santoro et al. 2016, "One-shot learning with memory-augmented neural networks", section 3.

An LSTM controller reads and writes an external memory M [slots, width] with least-recently-used access
(LRUA). At each step t the controller emits, per read head, a key k_t and a gate alpha_t, and (their eqs.):

    w^lu_{t-1}(i) = 1 if w^u_{t-1}(i) is among the n smallest usages (n = number of heads), else 0
    w^w_t  = sigmoid(alpha_t) w^r_{t-1} + (1 - sigmoid(alpha_t)) w^lu_{t-1}                 (write weights)
    M_t(i) = M_{t-1}(i) + w^w_t(i) k_t, after zeroing the least-used slot of w^u_{t-1}     (write)
    w^r_t(i) = softmax_i( k_t . M_t(i) / (|k_t| |M_t(i)|) ),   r_t = sum_i w^r_t(i) M_t(i)  (read)
    w^u_t  = gamma w^u_{t-1} + w^r_t + w^w_t                                                (usage)

Where the paper leaves a choice open, this file chooses (and tests/test_baselines.py's loop reference agrees):
ties among usages go to the lowest slot index (the start, all usages 0, is all ties); the cosine of an all-zero
memory row is 0 (norms floored at 1e-8); with several heads each head writes its own key and the usage sums
every head's weights; keys are tanh of a linear map of the controller's output; the controller's input is
[x_t, y_{t-1}, r_{t-1}] and the class scores are a linear map of [h_t, r_t], as in the paper's figure 1 / text.

Episodes as sequences: the support set, shuffled, is presented one example per step, then each query as
the next step. Labels, two ways (`offset_labels`):
  offset (Santoro's format): each step carries the previous example's label, so a query carries the last
      support example's label;
  with the input: each support step carries its own label, each query an all-zero label.
Each query continues from the state after the support set on its own, so a query's prediction depends on S
and itself only, never on other queries, and no query label is ever input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.fewshot import FewShotSplit
from ..episodes import EpisodeSampler, shuffle_support
from ..config import LoopConfig, check_positive
from ..engine import FunctionTask, Shard, fit
from .features import FeatureEpisodes, class_features, evaluate_features
from .pixels import pixel_features
from .store import load_weights, read_meta, save_weights

KIND = "mann"


@dataclass
class MemoryState:
    memory: torch.Tensor  # M_{t-1} [B, slots, width]
    read_weights: torch.Tensor  # w^r_{t-1} [B, heads, slots]
    usage: torch.Tensor  # w^u_{t-1} [B, slots]
    reads: torch.Tensor  # r_{t-1} [B, heads * width]

    def repeat(self, times: int) -> "MemoryState":
        """Each batch row repeated `times` times (row b -> rows b*times .. b*times + times - 1)."""
        return MemoryState(*(t.repeat_interleave(times, 0) for t in
                             (self.memory, self.read_weights, self.usage, self.reads)))


def least_used(usage: torch.Tensor, n: int) -> torch.Tensor:
    """w^lu: 1 on the n slots of smallest usage (ties to the lowest index), 0 elsewhere. [B, slots]."""
    order = torch.sort(usage, dim=-1, stable=True).indices[:, :n]
    return torch.zeros_like(usage).scatter_(-1, order, 1.0)


def lrua_step(state: MemoryState, keys: torch.Tensor, alpha: torch.Tensor, gamma: float) -> MemoryState:
    """One LRUA write then read. keys [B, heads, width], alpha [B, heads] (before the sigmoid)."""
    heads = keys.shape[1]
    gate = torch.sigmoid(alpha).unsqueeze(-1)  # [B, heads, 1]
    write_weights = gate * state.read_weights + (1 - gate) * least_used(state.usage, heads).unsqueeze(1)
    erase = least_used(state.usage, 1).unsqueeze(-1)  # the least-used slot, zeroed before writing
    memory = state.memory * (1 - erase) + write_weights.transpose(1, 2) @ keys  # sum_h w^w_h(i) k_h
    cosine = F.normalize(keys, dim=-1, eps=1e-8) @ F.normalize(memory, dim=-1, eps=1e-8).transpose(1, 2)
    read_weights = torch.softmax(cosine, dim=-1)  # [B, heads, slots]
    reads = (read_weights @ memory).flatten(1)  # [B, heads * width]
    usage = gamma * state.usage + read_weights.sum(1) + write_weights.sum(1)
    return MemoryState(memory, read_weights, usage, reads)


class MANN(nn.Module):
    """LSTM controller + LRUA memory over raw pixels (no convolution), `way` output classes."""

    def __init__(self, input_dim: int = 784, way: int = 5, hidden: int = 200, slots: int = 128, width: int = 40,
                 heads: int = 4, gamma: float = 0.95, offset_labels: bool = True):
        super().__init__()
        self.config = dict(input_dim=input_dim, way=way, hidden=hidden, slots=slots, width=width, heads=heads,
                           gamma=gamma, offset_labels=offset_labels)
        self.way, self.slots, self.width, self.heads, self.gamma = way, slots, width, heads, gamma
        self.offset_labels = offset_labels
        self.controller = nn.LSTMCell(input_dim + way + heads * width, hidden)
        self.key = nn.Linear(hidden, heads * width)
        self.alpha = nn.Linear(hidden, heads)
        self.out = nn.Linear(hidden + heads * width, way)

    def initial_state(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, MemoryState]:
        zeros = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        mem = MemoryState(zeros(batch, self.slots, self.width), zeros(batch, self.heads, self.slots),
                          zeros(batch, self.slots), zeros(batch, self.heads * self.width))
        return zeros(batch, self.controller.hidden_size), zeros(batch, self.controller.hidden_size), mem

    def step(self, x: torch.Tensor, label: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
             mem: MemoryState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, MemoryState]:
        """One time step: x [B, input_dim], label [B, way] one-hot (zeros: none) -> logits [B, way]."""
        h, c = self.controller(torch.cat([x, label, mem.reads], dim=-1), (h, c))
        keys = torch.tanh(self.key(h)).view(-1, self.heads, self.width)
        mem = lrua_step(mem, keys, self.alpha(h), self.gamma)
        return self.out(torch.cat([h, mem.reads], dim=-1)), h, c, mem

    def forward(self, support: torch.Tensor, labels: torch.Tensor,
                query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """support [B, S, D] in presentation order, labels [B, S], query [B, Q, D] ->
        (logits at each support step [B, S, way], logits of each query [B, Q, way])."""
        b, s = labels.shape
        q = query.shape[1]
        h, c, mem = self.initial_state(b, support.device)
        one_hot = F.one_hot(labels, self.way).float()  # [B, S, way]
        none = torch.zeros(b, self.way, device=support.device)
        support_logits = []
        for t in range(s):
            label = (one_hot[:, t - 1] if t > 0 else none) if self.offset_labels else one_hot[:, t]
            logits, h, c, mem = self.step(support[:, t], label, h, c, mem)
            support_logits.append(logits)
        label = one_hot[:, -1] if self.offset_labels else none  # never a query's label
        # Every query continues from the state after S on its own (batch rows b*Q + j).
        logits, *_ = self.step(query.flatten(0, 1), label.repeat_interleave(q, 0), h.repeat_interleave(q, 0),
                               c.repeat_interleave(q, 0), mem.repeat(q))
        return torch.stack(support_logits, 1), logits.view(b, q, self.way)


def mann_predictor(model: MANN, seed: int = 0):
    """A FeaturePredictor on pixel features ([E, S, 784]); support orders drawn from a CPU generator seeded
    once, so a run is reproducible on any device."""
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def predict(ep: FeatureEpisodes) -> torch.Tensor:
        if ep.n_way != model.way:
            raise ValueError(f"this MANN was trained {model.way}-way; the episodes are {ep.n_way}-way")
        ep = shuffle_support(ep, generator)  # Santoro's episodes arrive in a random order, not class by class
        support, labels = ep.support.flatten(2), ep.support_labels
        return torch.log_softmax(model(support, labels, ep.query.flatten(2))[1], dim=-1)
    return predict


@dataclass
class MANNConfig(LoopConfig):
    name: str = "baseline-mann"
    split: str = "vinyals"
    train_on: str = "train"
    way: int = 5
    shots: list = field(default_factory=lambda: [1, 5])  # training alternates between these support sizes
    query: int = 5  # queries per class in training episodes
    meta_batch: int = 16  # episodes per step over all processes (Santoro et al.: 16)
    hidden: int = 200  # Santoro et al.'s Omniglot controller and memory sizes
    slots: int = 128
    width: int = 40
    heads: int = 4
    gamma: float = 0.95
    offset_labels: bool = True  # Santoro's label-after-the-example format; False: each support label with its image
    steps: int = 20000
    warmup_steps: int = 100
    grad_clip: float = 10.0
    val_every: int = 2000
    val_episodes: int = 500

    def check(self) -> None:
        super().check()
        if not self.shots or not all(isinstance(k, int) and k >= 1 for k in self.shots):
            raise ValueError("shots should be a list of support sizes per class, e.g. [1, 5]")
        check_positive(self, "way", "query", "meta_batch", "val_episodes")


def build_mann(cfg: MANNConfig, input_dim: int = 784) -> MANN:
    return MANN(input_dim, cfg.way, cfg.hidden, cfg.slots, cfg.width, cfg.heads, cfg.gamma, cfg.offset_labels)


def train_mann(cfg: MANNConfig, splits: dict[str, FewShotSplit], run_dir: Path, device: torch.device,
               resume: bool = True, stop_after: int | None = None) -> dict:
    """Cross-entropy at every support step and every query; best/ = best val 5-way 1-shot accuracy."""
    train = splits[cfg.train_on].to(device)
    val_table = class_features(splits["val"].to(device), pixel_features)
    torch.manual_seed(cfg.seed)
    model = build_mann(cfg, val_table.shape[-1]).to(device)
    generator = torch.Generator(device=device)  # the engine seeds it per rank
    samplers = [EpisodeSampler(train, cfg.way, k, cfg.query) for k in cfg.shots]
    for sampler in samplers:
        sampler.generator = generator  # one generator, so the resume point holds all the sampling state

    def batch(shard: Shard):
        return samplers[shard.step % len(samplers)].sample(shard.size)  # by the step: a resumed run alternates on

    def loss(net: nn.Module, ep):
        ep = shuffle_support(ep, generator)  # Santoro's episodes arrive in a random order, not class by class
        support, labels = ep.support.flatten(2), ep.support_labels
        s_logits, q_logits = net(support, labels, ep.query.flatten(2))
        if cfg.offset_labels:  # Santoro's loss: every step predicts its example's label before seeing it
            logits = torch.cat([s_logits, q_logits], 1).flatten(0, 1)
            targets = torch.cat([labels, ep.query_labels], 1).flatten()
        else:  # support labels are inputs: only the queries have something to predict
            logits, targets = q_logits.flatten(0, 1), ep.query_labels.flatten()
        acc = (q_logits.argmax(-1) == ep.query_labels).float().mean()
        return F.cross_entropy(logits, targets), acc

    def validate(m: MANN) -> dict[str, float]:
        predict = mann_predictor(m, seed=0)
        return {f"val_{cfg.way}w{k}s": evaluate_features(predict, val_table, cfg.way, k, episodes=cfg.val_episodes,
                                                         seed=12345).mean for k in sorted(set(cfg.shots))}

    info = {"trained_as": "MANN (Santoro et al. 2016), no conv", "recipe": vars(cfg)}
    task = FunctionTask(model, [generator], batch, loss, validate,
                        save=lambda m, folder: save_weights(m, folder, KIND, m.config, info),
                        global_batch=cfg.meta_batch)
    return fit(task, cfg, run_dir, resume=resume, stop_after=stop_after)


def load_mann(folder: str | Path, device: str | torch.device = "cpu") -> MANN:
    return load_weights(MANN(**read_meta(folder)["config"]), folder, KIND, device)
