"""The resume point's random state and reading it back on every rank (the engine writes the file itself).

A fresh run seeds rank r's stream i with rank_seed(seed, r) + i; the resume point holds every rank's streams
and global torch RNG, so a resumed run continues bit-identically. Under torchrun rank 0 decides whether to
resume; a rank that cannot see or read the same resume point, or restores another step, stops every rank
with one message. Resumed on another number of processes, every stream re-seeds from (seed, rank, step).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from .checkpoint import load_state, optimizer_from_flat
from .distributed import Dist, all_gather_ints, gather_states, rank_seed, resume_seed
from .rundir import TrainingError, check_finite_state


def seed_streams(generators: list[Any], seed: int, dist: Dist) -> None:
    """A fresh run: rank r's stream i starts at rank_seed(seed, r) + i (rank 0: what one process draws). Rank 0
    leaves the global torch RNG (dropout) where the model's initialisation left it; the others re-seed it, so
    that no two ranks drop the same units."""
    for i, g in enumerate(generators):
        g.manual_seed(rank_seed(seed, dist.rank) + i)
    if dist.rank > 0:
        torch.manual_seed(rank_seed(seed, dist.rank))


def agree_resume(has_point: bool, last: Path, dist: Dist) -> bool:
    """Rank 0 decides whether the run resumes; it does only if every rank sees the resume point."""
    seen = [flags[0] for flags in all_gather_ints([int(has_point)], dist)]
    if not seen[0]:
        return False
    missing = [r for r, has in enumerate(seen) if not has]
    if missing:
        raise TrainingError(f"{last}: rank 0 resumes from it but rank(s) {', '.join(map(str, missing))} of "
                            f"{dist.world} cannot see it: every process must read the same run folder (put out_dir "
                            "on a file system they share), or pass --restart to start over")
    return True


def resume_agreed(last: Path, model: nn.Module, opt: torch.optim.Optimizer, generators: list[Any], dist: Dist,
                   seed: int) -> tuple[int, float, float]:
    """_resume on every rank; a rank that fails, or restores another step than rank 0, stops every rank."""
    error, step, best, elapsed = None, -1, -math.inf, 0.0
    try:
        step, best, elapsed = _resume(last, model, opt, generators, dist, seed)
    except TrainingError as e:
        error = str(e)
    steps = [s[0] for s in all_gather_ints([step], dist)]
    if error is not None:
        raise TrainingError(error)
    failed = [r for r, s in enumerate(steps) if s < 0]
    if failed:
        raise TrainingError(f"{last}: rank(s) {', '.join(map(str, failed))} could not read the resume point; "
                            "every process must read the same run folder, or pass --restart to start over")
    if len(set(steps)) > 1:
        raise TrainingError(f"{last}: the processes restored different steps ({', '.join(f'rank {r}: {s}' for r, s in enumerate(steps))}); "
                            "they do not read the same run folder: put out_dir on a file system they share, or "
                            "pass --restart to start over")
    return step, best, elapsed


def rng_states(generators: list[Any], device: torch.device) -> dict[str, torch.Tensor]:
    """This rank's random state: the task's generators, then the global torch RNG (dropout) on the CPU and the
    model's GPU."""
    states = {f"rng.{i}": g.get_state() for i, g in enumerate(generators)}
    states["torch_rng.cpu"] = torch.get_rng_state()
    if device.type == "cuda":
        states["torch_rng.cuda"] = torch.cuda.get_rng_state(device)
    return states


def gather_rng(generators: list[Any], device: torch.device, dist: Dist) -> dict[str, torch.Tensor]:
    """Every rank's random states, named NAME.rank<r> (rank 0 writes them all into the resume point)."""
    mine = rng_states(generators, device)
    gathered = gather_states(list(mine.values()), dist)
    return {f"{name}.rank{r}": part for name, parts in zip(mine, gathered) for r, part in enumerate(parts)}


def _resume(last: Path, model: nn.Module, opt: torch.optim.Optimizer, generators: list[Any], dist: Dist,
            seed: int = 0) -> tuple[int, float, float]:
    hint = "pass --restart to start the run over"
    try:
        tensors, info = load_state(last)
        step, best = int(info["step"]), float(info["best"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise TrainingError(f"{last}: not a readable resume point ({str(e).splitlines()[0][:160]}); {hint}") from None
    check_finite_state(tensors, last)  # a diverged resume point would train NaN steps
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer_from_flat(opt, tensors, info["optimizer"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise TrainingError(f"{last}: does not fit this model ({str(e).splitlines()[0][:200]}); {hint}") from None
    same_world = info.get("world", 1) == dist.world
    if not same_world:  # another number of processes: re-derive every stream from (seed, rank, step)
        for i, g in enumerate(generators):
            g.manual_seed(resume_seed(seed, dist.rank, step, i))
        torch.manual_seed(resume_seed(seed, dist.rank, step, len(generators)))
        if dist.is_main:
            print(f"warning: {last} was written by {info.get('world', 1)} process(es), this run has "
                  f"{dist.world}: episodes are re-seeded from (seed, rank, step)", file=sys.stderr)
        return step, best, float(info.get("elapsed", 0.0))
    for i, g in enumerate(generators):
        state = tensors.get(f"rng.{i}.rank{dist.rank}")
        for name in {0: ("sampler_rng", "rng")}.get(i, ()):  # resume points written before the engine
            state = tensors.get(name) if state is None else state
        if state is not None:
            g.set_state(state)
        else:
            g.manual_seed(resume_seed(seed, dist.rank, step, i))
    cpu = tensors.get(f"torch_rng.cpu.rank{dist.rank}")  # absent from resume points written before it was saved
    if cpu is not None:
        torch.set_rng_state(cpu)
    cuda = tensors.get(f"torch_rng.cuda.rank{dist.rank}")
    device = next(model.parameters()).device
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
    return step, best, float(info.get("elapsed", 0.0))
