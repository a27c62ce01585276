"""The paper's oracle: an LSTM language model (Zaremba et al. 2014, "small") that fills the blank with each
candidate word and picks the sentence it finds most likely.

It is not a one-shot learner: it is trained on all of ptb.train.txt, held-out words included, so it is an
upper bound, as in the paper.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ..atomic import write_text, write_with
from ..episodes import Episodes
from .vocab import BLANK_ID, PAD_ID


@dataclass
class LMConfig:
    """Zaremba et al.'s small configuration (their Table 1: 120.7 valid / 114.5 test perplexity)."""

    hidden: int = 200
    layers: int = 2
    dropout: float = 0.0
    init_scale: float = 0.1
    batch: int = 20
    bptt: int = 35
    lr: float = 1.0
    lr_decay: float = 0.5
    decay_after: int = 4  # epochs at the full learning rate; then multiplied by lr_decay every epoch
    epochs: int = 13
    clip: float = 5.0
    seed: int = 0


class LSTMLanguageModel(nn.Module):
    """Embedding -> stacked LSTM -> linear softmax over the vocabulary; every weight uniform in ±init_scale."""

    def __init__(self, vocab_size: int, hidden: int = 200, layers: int = 2, dropout: float = 0.0,
                 init_scale: float = 0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, batch_first=True, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, vocab_size)
        for p in self.parameters():
            nn.init.uniform_(p, -init_scale, init_scale)

    def forward(self, tokens: torch.Tensor, state=None):
        """tokens [B, T] -> hidden outputs [B, T, H] (pass them to .decoder for logits), new state."""
        out, state = self.lstm(self.drop(self.embedding(tokens)), state)
        return self.drop(out), state

    @torch.no_grad()
    def sentence_log_likelihood(self, sentences: list[list[int]], eos: int, start: list[int] | None = None,
                                chunk: int = 256) -> torch.Tensor:
        """log P(w_1 .. w_n <eos>) for each sentence, each read from a zero state after an <eos>.

        start: if given, only the terms log P(w_t | w_<t) with t >= start[i] are summed (all words are still read).
        Only those positions go through the 10k-way softmax, the expensive part; sentences are sorted by length
        so each chunk pads little.
        """
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        scores = torch.empty(len(sentences))
        for first in range(0, len(order), chunk):
            idx = order[first:first + chunk]
            width = max(len(sentences[i]) for i in idx) + 1
            inputs = torch.full((len(idx), width), PAD_ID, dtype=torch.long)
            targets = torch.full((len(idx), width), -1, dtype=torch.long)
            for row, i in enumerate(idx):
                s = sentences[i]
                inputs[row, : len(s) + 1] = torch.tensor([eos, *s])
                targets[row, : len(s) + 1] = torch.tensor([*s, eos])
                if start is not None:
                    targets[row, : start[i]] = -1
            device = self.decoder.weight.device
            inputs, targets = inputs.to(device), targets.to(device)
            hidden, _ = self(inputs)
            real = targets >= 0
            logp = torch.log_softmax(self.decoder(hidden[real]), dim=-1)
            token_logp = logp.gather(1, targets[real].unsqueeze(1)).squeeze(1)
            per_row = torch.zeros(len(idx), device=device).index_add_(0, real.nonzero()[:, 0], token_logp)
            scores[torch.tensor(idx)] = per_row.cpu()
        return scores


def stream(sentences: list[list[int]], eos: int) -> torch.Tensor:
    """The corpus as one token stream with <eos> after every sentence, as Zaremba et al. read it."""
    return torch.tensor([t for s in sentences for t in (*s, eos)], dtype=torch.long)


def batchify(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """[N] -> [batch, N // batch]: `batch` contiguous streams read side by side."""
    n = tokens.numel() // batch
    return tokens[: n * batch].view(batch, n)


@torch.no_grad()
def perplexity(lm: LSTMLanguageModel, tokens: torch.Tensor, batch: int = 1, bptt: int = 100,
               progress: bool = False) -> float:
    """exp(mean NLL per token) over a stream, carrying the state across chunks (batch 1: the whole text in order)."""
    lm.eval()
    data = batchify(tokens, batch).to(lm.decoder.weight.device)
    state, nll, count = None, 0.0, 0
    for i in tqdm(range(0, data.shape[1] - 1, bptt), desc="perplexity", leave=False, disable=not progress):
        x = data[:, i:i + bptt]
        y = data[:, i + 1:i + 1 + bptt]
        x = x[:, : y.shape[1]]
        hidden, state = lm(x, state)
        nll += F.cross_entropy(lm.decoder(hidden).flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return math.exp(nll / count)


def train_lm(cfg: LMConfig, vocab_size: int, train_tokens: torch.Tensor, valid_tokens: torch.Tensor,
             run_dir: Path, device: torch.device | str = "cpu", progress: bool = True) -> LSTMLanguageModel:
    """Truncated BPTT with plain SGD, as Zaremba et al.; resumes from run_dir/last.safetensors after a crash.

    Writes run_dir/log.jsonl (one line per epoch: train and valid perplexity, learning rate, seconds) and
    run_dir/model.safetensors + lm_config.json at the end.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    lm = LSTMLanguageModel(vocab_size, cfg.hidden, cfg.layers, cfg.dropout, cfg.init_scale)
    data = batchify(train_tokens, cfg.batch).to(device)
    log, last = run_dir / "log.jsonl", run_dir / "last.safetensors"
    epoch = 0
    if last.is_file():  # resume at an epoch boundary (the only state is the weights: SGD has none)
        lm.load_state_dict(load_file(last))
        epoch = sum(1 for _ in log.open()) if log.is_file() else 0
    lm.to(device)
    opt = torch.optim.SGD(lm.parameters(), lr=cfg.lr)
    for epoch in range(epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = cfg.lr * cfg.lr_decay ** max(0, epoch + 1 - cfg.decay_after)
        for group in opt.param_groups:
            group["lr"] = lr
        lm.train()
        state, nll, count = None, 0.0, 0
        steps = range(0, data.shape[1] - 1, cfg.bptt)
        bar = tqdm(steps, desc=f"LM epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress)
        for i in bar:
            x, y = data[:, i:i + cfg.bptt], data[:, i + 1:i + 1 + cfg.bptt]
            x = x[:, : y.shape[1]]
            if state is not None:  # carry the state, cut the gradient (truncated BPTT)
                state = tuple(s.detach() for s in state)
            hidden, state = lm(x, state)
            loss = F.cross_entropy(lm.decoder(hidden).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            # Zaremba et al.'s cost is summed over the BPTT steps (averaged over the batch only): lr 1 and the
            # clip at 5 are tuned for that scale, 35x the per-token mean.
            (loss * y.shape[1]).backward()
            nn.utils.clip_grad_norm_(lm.parameters(), cfg.clip)
            opt.step()
            nll += loss.item() * y.numel()
            count += y.numel()
            if (i // cfg.bptt) % 100 == 0:
                bar.set_postfix(ppl=f"{math.exp(nll / count):.1f}")
        record = {"epoch": epoch + 1, "lr": lr, "train_ppl": math.exp(nll / count),
                  "valid_ppl": perplexity(lm, valid_tokens), "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(record), flush=True)
        state = {k: v.cpu().contiguous() for k, v in lm.state_dict().items()}
        write_with(last, lambda p: save_file(state, p))
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
    save_lm(lm, cfg, vocab_size, run_dir)
    return lm.eval()


def save_lm(lm: LSTMLanguageModel, cfg: LMConfig, vocab_size: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.cpu().contiguous() for k, v in lm.state_dict().items()}
    write_with(folder / "model.safetensors", lambda p: save_file(state, p))
    write_text(folder / "lm_config.json", json.dumps({**asdict(cfg), "vocab_size": vocab_size}, indent=2) + "\n")


def load_lm(folder: Path, device: torch.device | str = "cpu") -> tuple[LSTMLanguageModel, LMConfig]:
    info = json.loads((folder / "lm_config.json").read_text())
    vocab_size = info.pop("vocab_size")
    cfg = LMConfig(**info)
    lm = LSTMLanguageModel(vocab_size, cfg.hidden, cfg.layers, cfg.dropout, cfg.init_scale)
    lm.load_state_dict(load_file(str(folder / "model.safetensors")))
    return lm.to(device).eval(), cfg


def fill_blank(sentence: torch.Tensor, word: int) -> list[int]:
    """A padded, blanked sentence [T] as a list of ids with the blank replaced by `word`."""
    ids = sentence[sentence != PAD_ID]
    return torch.where(ids == BLANK_ID, torch.tensor(word), ids).tolist()


def oracle_predictor(lm: LSTMLanguageModel, eos: int) -> Callable[[Episodes], torch.Tensor]:
    """A Predictor (matchnet.evaluate): log-softmax over the 5 candidates of each filled sentence's log-likelihood.

    The candidates are the episode's label words (Episodes.classes); the support set is not looked at. The words
    before the blank score the same for every candidate, so only the terms from the blank on are computed: the
    log-softmax over candidates is unchanged by a shared constant. Scores are cached by (blanked sentence, word):
    test episodes reuse the same few thousand sentences.
    """
    cache: dict[tuple[tuple[int, ...], int], float] = {}

    def predict(ep: Episodes) -> torch.Tensor:
        e, q, _ = ep.query.shape
        keys, todo = [], {}
        for i in range(e):
            for j in range(q):
                blanked = tuple(ep.query[i, j][ep.query[i, j] != PAD_ID].tolist())
                for word in ep.classes[i].tolist():
                    key = (blanked, word)
                    keys.append(key)
                    if key not in cache and key not in todo:
                        todo[key] = fill_blank(ep.query[i, j], word)
        if todo:
            starts = [key[0].index(BLANK_ID) for key in todo]
            scores = lm.sentence_log_likelihood(list(todo.values()), eos, start=starts)
            cache.update(zip(todo.keys(), scores.tolist()))
        scores = torch.tensor([cache[k] for k in keys]).view(e, q, ep.n_way)
        return torch.log_softmax(scores, dim=-1)

    return predict
