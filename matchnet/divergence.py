"""A diverged run is an error: the engine's guard that stops training before a NaN reaches a file.

Each step flags a non-finite loss (or clipped gradient norm) on the device, with no host sync; at the steps
that sync anyway (log, checkpoint, validation) the flag is read and the weights and Adam's moments are checked
(a non-finite gradient ends up there), and the run stops with one line: the step, the last finite loss, what to
try. Under torchrun every rank stops at the same step.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .distributed import Dist
from .rundir import TrainingError


class FiniteGuard:
    """Stops a diverged run before it logs or writes anything. step() flags, on the device (no host sync per
    step), the first step whose loss (or clipped gradient norm) is not finite; check(), at the steps that sync
    anyway (log, checkpoint, validation), reads that flag and checks the weights and Adam's moments, which take
    in any non-finite gradient: one host sync, and under torchrun every rank stops at the same step."""

    def __init__(self, device: torch.device) -> None:
        self.bad_step = torch.zeros((), dtype=torch.long, device=device)
        self.last_good: tuple[int, float] | None = None  # (step, loss) of the last finite loss logged

    def step(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> None:
        finite = torch.isfinite(loss.detach())
        if grad_norm is not None:
            finite &= torch.isfinite(grad_norm)
        self.bad_step.masked_fill_(~finite & (self.bad_step == 0), step)

    def check(self, step: int, model: nn.Module, opt: torch.optim.Optimizer, dist: Dist, cfg: Any,
              bar: tqdm | None = None) -> None:
        state = [p.detach() for p in model.parameters()] + [
            v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point()]
        broken = torch.stack([~torch.isfinite(t).all() for t in state]).any().to(self.bad_step.device)
        flags = torch.stack([self.bad_step, broken.long()])
        if dist.enabled:  # every rank stops at the same step
            import torch.distributed as tdist

            tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
        first, broken_state = (int(x) for x in flags.tolist())
        if not first and not broken_state:
            return
        what = (f"the loss of step {first} is not finite" if first else
                f"by step {step} the weights or the optimizer state are not finite (a gradient that was not)")
        good = (f"the last finite loss was {self.last_good[1]:.4g} (logged at step {self.last_good[0]})"
                if self.last_good else "no finite loss was logged before")
        tries = [f"a lower lr (now {cfg.lr:g})"]
        if hasattr(cfg, "grad_clip"):
            tries.append(f"grad_clip (now {cfg.grad_clip:g}, e.g. --set grad_clip=1.0)")
        elif hasattr(cfg, "warmup_steps"):
            tries.append(f"a warm-up (warmup_steps, now {cfg.warmup_steps})")
        if bar is not None:
            bar.close()  # the error line starts on a line of its own
        raise TrainingError(f"training diverged: {what}; {good}. Nothing non-finite was written (best/ and "
                            f"last.safetensors are left as they were); try {' or '.join(tries)}, with --restart")
