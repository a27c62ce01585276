"""One training loop for the baselines: Adam with warm-up and cosine decay, periodic validation, best-on-val
checkpoints, a JSONL log, and resume after a crash (the same files as matchnet.train writes).

The config only needs the fields the loop reads (see LoopFields); each baseline's step function draws its
own batch from its own generator, which the resume point saves too.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint import load_state, optimizer_from_flat, optimizer_to_flat, save_state


class LoopFields(Protocol):
    name: str
    steps: int
    lr: float
    weight_decay: float
    warmup_steps: int
    val_every: int
    log_every: int
    checkpoint_every: int
    progress: bool


def learning_rate(cfg: LoopFields, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / cfg.steps))


StepFn = Callable[[], tuple[torch.Tensor, torch.Tensor]]  # () -> (loss to minimise, training accuracy in [0, 1])


def fit(model: nn.Module, cfg: LoopFields, run_dir: Path, step_fn: StepFn, generator: torch.Generator,
        validate: Callable[[], dict[str, float]], save: Callable[[Path], None], resume: bool = True,
        stop_after: int | None = None) -> dict:
    """Train `model` for cfg.steps (or until cfg.time_limit seconds, if the config has a non-zero one); returns a
    summary. Writes run_dir/log.jsonl, best/ (by the first value validate() returns), final/ (written last: its
    presence means the run finished) and last.safetensors (the resume point)."""
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           fused=device.type == "cuda")
    step, best, log, last = 0, -1.0, run_dir / "log.jsonl", run_dir / "last.safetensors"
    if resume and last.is_file():
        tensors, info = load_state(last)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer_from_flat(opt, tensors, info["optimizer"])
        generator.set_state(tensors["rng"])
        step, best = info["step"], info["best"]
        keep = []
        if log.exists():  # lines after the resume point will be written again
            keep = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
            log.write_text("".join(ln + "\n" for ln in keep))
        # Times in the log and the summary count the earlier sessions too.
        t0 -= info.get("elapsed", json.loads(keep[-1]).get("time", 0.0) if keep else 0.0)
    elif log.exists():
        log.unlink()

    def checkpoint() -> None:
        opt_tensors, opt_info = optimizer_to_flat(opt)
        tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()}, **opt_tensors,
                   "rng": generator.get_state()}
        save_state(last, tensors, {"step": step, "best": best, "optimizer": opt_info,
                                   "elapsed": time.perf_counter() - t0})

    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    limit = getattr(cfg, "time_limit", 0.0)  # seconds; reaching it ends the run as if all steps were done
    out_of_time = False
    loss_sum = torch.zeros((), device=device)
    acc_sum = torch.zeros((), device=device)
    since = 0
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, unit="step", disable=not cfg.progress)
    model.train()
    while step < end:
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        loss, acc = step_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if getattr(cfg, "grad_clip", 0.0) > 0:  # the MANN's LSTM; the conv nets train without clipping
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss_sum += loss.detach()  # summed on the device: no host sync per step
        acc_sum += acc.detach()
        since += 1
        step += 1
        bar.update(1)
        out_of_time = limit > 0 and time.perf_counter() - t0 > limit
        validate_now = step % cfg.val_every == 0 or step == cfg.steps or out_of_time
        if step % cfg.log_every == 0 or step == end or validate_now:
            record = {"step": step, "loss": loss_sum.item() / since, "train_acc": 100 * acc_sum.item() / since,
                      "lr": learning_rate(cfg, step - 1)}
            loss_sum.zero_(), acc_sum.zero_()
            since = 0
            if validate_now:
                model.eval()
                scores = validate()
                model.train()
                record.update(scores)
                first = next(iter(scores.values()))
                if first > best:
                    best = first
                    save(run_dir / "best")
            record["time"] = round(time.perf_counter() - t0, 1)
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.3f}", best_val=f"{best:.2f}")
        if step % cfg.checkpoint_every == 0 or step == end or out_of_time:
            checkpoint()
        if out_of_time:
            break
    bar.close()
    model.eval()
    if step >= cfg.steps or out_of_time:
        save(run_dir / "final")
    return {"steps": step, "best_val": best, "seconds": round(time.perf_counter() - t0, 1), "run_dir": str(run_dir),
            "stopped_at_time_limit": out_of_time}


def finished(run_dir: Path) -> bool:
    return (run_dir / "final" / "config.json").is_file() and (run_dir / "best" / "config.json").is_file()
