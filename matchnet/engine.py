"""The one training loop: every model that trains (Matching Networks on images or sentences, the baselines)
runs through `fit`, on one process or many (torchrun + DistributedDataParallel).

The engine owns what every model needs: the learning-rate schedule, autocast, gradient clipping, the
optimizer step, the progress bar, validation (always in eval mode, without gradients, the model's mode
restored after), `best/` by the first validation metric, `final/`, the resume point `last.safetensors`
(written atomically, checked against the config it was started with), the JSONL log, the run record, and
Ctrl-C/SIGTERM (save a resume point, exit with one line). A task owns only what differs (see `Task`).

Distributed: `torchrun --nproc_per_node=N` sets RANK/WORLD_SIZE; `init_distributed` then starts the process
group (NCCL on GPUs, gloo on CPUs), the model is wrapped in DistributedDataParallel, each rank draws its own
share of the step's episodes (the config's meta-batch is the global one), and rank 0 alone validates, logs,
writes checkpoints and shows progress. BatchNorm statistics stay per rank by default (what DDP does): every
rank normalises over at least one whole episode, hundreds of images for the shipped recipes, and torch's
SyncBatchNorm runs only on GPUs; `sync_bn = true` converts to it there, to make N ranks compute exactly
what one process with the whole meta-batch would.
"""
from __future__ import annotations

import json
import math
import os
import platform
import signal
import sys
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.distributed as tdist
from safetensors import SafetensorError
from torch import nn
from tqdm import tqdm

from . import atomic
from .checkpoint import CheckpointError, load_state, optimizer_from_flat, optimizer_to_flat, save_state
from .rundir import (RUNTIME_KEYS, RunLock, TrainingError, check_finite_state, check_resume_config,  # noqa: F401
                     check_run_name, last_finite_loss, prepare_run_dir, read_log)


# -- processes -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank 0 of 1 unless torchrun started it."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> Dist:
    """Start the process group when torchrun set RANK; a plain `python` run starts nothing."""
    if "RANK" not in os.environ:
        return Dist()
    if tdist.is_initialized():
        return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    tdist.init_process_group("nccl" if cuda else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size(), local)


def current_dist() -> Dist:
    if tdist.is_available() and tdist.is_initialized():
        return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Dist()


def close_distributed() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def resolve_device(name: str, dist: Dist | None = None) -> torch.device:
    """auto | cuda | cpu -> a torch device; under torchrun each rank takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda", (dist or current_dist()).local_rank)
    return torch.device(name)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def set_deterministic(on: bool) -> None:
    """torch's deterministic algorithms (slower on GPUs: no cuDNN autotuning, deterministic scatter/index ops)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps the config's seed (a 1-process run is unchanged); other ranks get their own streams."""
    return seed if rank == 0 else (seed * 1_000_003 + rank * 7_919) % (2 ** 63)


# -- what a task provides ----------------------------------------------------------------------------------

class Task(Protocol):
    """What one kind of model brings to the loop.

    model:      the nn.Module to train (unwrapped; the engine wraps it in DDP when distributed).
    generators: the random generators that draw training batches, saved in the resume point.
    batch():    this rank's share of the next step's training batch.
    loss(net, batch): (loss to minimise, training accuracy in [0, 1]); `net` may be the DDP wrapper: call it,
                not task.model, so gradients are all-reduced.
    validate(model): {metric: value}, higher is better; the first one selects best/. Runs in eval mode.
    save(model, folder): write a checkpoint folder (best/, final/).
    """

    model: nn.Module
    generators: list[torch.Generator]

    def batch(self) -> Any: ...
    def loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]: ...
    def validate(self, model: nn.Module) -> dict[str, float]: ...
    def save(self, model: nn.Module, folder: Path) -> None: ...


@dataclass
class FunctionTask:
    """A Task from plain functions (the baselines build theirs this way)."""

    model: nn.Module
    generators: list[torch.Generator]
    batch: Callable[[], Any]
    loss: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]
    validate: Callable[[nn.Module], dict[str, float]]
    save: Callable[[nn.Module, Path], None]
    log_extras: Callable[[nn.Module], dict[str, float]] | None = None


def run_validation(model: nn.Module, validate: Callable[[nn.Module], dict[str, float]]) -> dict[str, float]:
    """validate(model) under eval mode and no_grad: BatchNorm uses (and keeps) its running statistics."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return validate(model)
    finally:
        model.train(was_training)


def learning_rate(cfg: Any, step: int) -> float:
    """Linear warm-up, then cosine decay to 0 (or `step`: halve four times; `constant`)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    schedule = getattr(cfg, "schedule", "cosine")
    if schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / cfg.steps))
    if schedule == "step":
        return cfg.lr * 0.5 ** (4 * step // cfg.steps)
    return cfg.lr


# -- the run folder ----------------------------------------------------------------------------------------

def config_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg) if is_dataclass(cfg) else dict(vars(cfg))


class StopRequest:
    """Ctrl-C or SIGTERM sets a flag; the loop saves a resume point at the end of the step and returns.

    A second Ctrl-C interrupts at once (the default handler is back after the first)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# -- the loop ----------------------------------------------------------------------------------------------

def fit(task: Task, cfg: Any, run_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Train task.model in run_dir, which this run owns (locked, rank 0) for its whole life; see _fit."""
    with RunLock(run_dir, enabled=current_dist().is_main):
        return _fit(task, cfg, run_dir, **options)


def _fit(task: Task, cfg: Any, run_dir: str | os.PathLike, *, resume: bool = True, stop_after: int | None = None,
         record: dict[str, Any] | None = None, started: float | None = None) -> dict[str, Any]:
    """Train task.model for cfg.steps (or `stop_after` more steps, as a crash would); returns a summary.

    Reads from cfg: name, steps, lr, weight_decay, warmup_steps, val_every, log_every, checkpoint_every,
    progress and, when present, schedule, amp, grad_clip, time_limit (seconds), sync_bn.
    Writes run_dir/{train_config.json, run.json, log.jsonl, last.safetensors, best/, final/} (rank 0 only).
    `started`: a time.perf_counter() from before data loading, so that the log's times count start-up too.
    """
    t0 = time.perf_counter() if started is None else started
    run_dir = Path(run_dir)
    dist = current_dist()
    main = dist.is_main
    model = task.model
    device = next(model.parameters()).device
    settings = config_dict(cfg)
    last, log = run_dir / "last.safetensors", run_dir / "log.jsonl"
    resuming = resume and last.is_file()
    if main:
        check_run_name(cfg.name)
        prepare_run_dir(run_dir, fresh=not resuming, settings=settings, restart=not resume)
    _barrier(dist)

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           fused=device.type == "cuda")
    step, best, elapsed = 0, -math.inf, 0.0
    if resuming:
        step, best, elapsed = _resume(last, model, opt, task.generators, dist)
    guard = FiniteGuard(device)
    if main:
        history = read_log(log, step)
        guard.last_good = last_finite_loss(history)
        _guard_write(run_dir / "train_config.json", lambda: atomic.write_text(
            run_dir / "train_config.json", json.dumps(settings, indent=2) + "\n"))
        _guard_write(log, lambda: atomic.write_text(log, "".join(json.dumps(r) + "\n" for r in history)))
    t0 -= elapsed  # times in the log and the summary count earlier sessions of this run too

    net: nn.Module = model
    if dist.enabled:
        if getattr(cfg, "sync_bn", False) and device.type == "cuda":
            # replaces the BatchNorm children in place (the top module is not a BatchNorm): task.model stays it
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                  else None)

    amp = bool(getattr(cfg, "amp", False)) and device.type == "cuda"
    grad_clip = float(getattr(cfg, "grad_clip", 0.0))
    limit = float(getattr(cfg, "time_limit", 0.0))
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    loss_sum = torch.zeros((), device=device)
    acc_sum = torch.zeros((), device=device)
    since, first_step = 0, step + 1
    out_of_time, stopped = False, None

    def checkpoint() -> None:
        rng = _gather_rng(task.generators, dist)  # a collective: every rank takes part, rank 0 writes
        if not main:
            return
        opt_tensors, opt_info = optimizer_to_flat(opt)
        tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()}, **opt_tensors, **rng}
        info = {"step": step, "best": best, "optimizer": opt_info, "world": dist.world,
                "elapsed": time.perf_counter() - t0}
        _guard_write(last, lambda: save_state(last, tensors, info))

    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, unit="step", disable=not (cfg.progress and main))
    model.train()
    with StopRequest() as stop:
        while step < end:
            lr = learning_rate(cfg, step)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = task.batch()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, acc = task.loss(net, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = None
            if grad_clip > 0:
                norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            guard.step(step + 1, loss, norm)
            loss_sum += loss.detach().float()  # summed on the device: no host sync per step
            acc_sum += acc.detach().float()
            since += 1
            step += 1
            bar.update(1)
            stopped, out_of_time = _agree_stop(stop.signal, limit > 0 and time.perf_counter() - t0 > limit, dist,
                                               device)
            validate_now = step % cfg.val_every == 0 or step == cfg.steps or out_of_time
            if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step == end or validate_now or \
                    stopped:  # before anything is logged or written: a NaN never reaches a file
                guard.check(step, model, opt, dist, cfg, bar)
            if main and (step % cfg.log_every == 0 or step == end or validate_now or stopped):
                entry = {"step": step, "steps_averaged": [step - since + 1, step],
                         "loss": loss_sum.item() / since, "train_acc": 100 * acc_sum.item() / since,
                         "lr": lr}
                if getattr(task, "log_extras", None) is not None:
                    entry.update(task.log_extras(model))
                loss_sum.zero_(), acc_sum.zero_()
                since = 0
                if validate_now:
                    scores = run_validation(model, task.validate)
                    entry.update(scores)
                    first = next(iter(scores.values()))
                    if first > best:
                        best = first
                        _guard_write(run_dir / "best", lambda: task.save(model, run_dir / "best"))
                entry["time"] = round(time.perf_counter() - t0, 2)
                guard.last_good = (step, entry["loss"])
                _guard_write(log, lambda: _append(log, entry))
                bar.set_postfix(loss=f"{entry['loss']:.3f}", best_val=f"{best:.2f}")
            if step % cfg.checkpoint_every == 0 or step == end or out_of_time or stopped:
                checkpoint()
            if out_of_time or stopped:
                break
    bar.close()
    finished = step >= cfg.steps or out_of_time
    if main and finished and not stopped:
        _guard_write(run_dir / "final", lambda: task.save(model, run_dir / "final"))
    summary = {"steps": step, "best_val": best, "seconds": round(time.perf_counter() - t0, 2),
               "run_dir": str(run_dir), "world_size": dist.world, "stopped_at_time_limit": out_of_time,
               "interrupted": stopped is not None, "signal": stopped}
    if main:
        run_record = {"config": settings, "hardware": hardware(device), "world_size": dist.world,
                      "torch": torch.__version__, "python": platform.python_version(),
                      "first_step_this_session": first_step, **summary, **(record or {})}
        _guard_write(run_dir / "run.json",
                     lambda: atomic.write_text(run_dir / "run.json", json.dumps(run_record, indent=2) + "\n"))
    _barrier(dist)
    return summary


def _append(log: Path, entry: dict) -> None:
    with log.open("a") as f:
        f.write(json.dumps(entry) + "\n")


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
            flags = flags.to(flags.device if flags.device.type == "cuda" else "cpu")
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


def _guard_write(path: Path, write: Callable[[], Any]) -> None:
    """A full disk or a folder that became unwritable is a one-line TrainingError naming the file."""
    try:
        write()
    except (OSError, SafetensorError) as e:
        raise TrainingError(f"cannot write {path} ({getattr(e, 'strerror', None) or e}); free some disk space "
                            "or set out_dir to another folder, then run the same command to resume") from None


def _barrier(dist: Dist) -> None:
    if dist.enabled:
        tdist.barrier()


def _agree_stop(signum: int | None, out_of_time: bool, dist: Dist,
                device: torch.device) -> tuple[int | None, bool]:
    """Every rank stops at the same step if any rank was signalled (torchrun signals them all) or ran out of
    time (clocks differ a little between processes)."""
    if not dist.enabled:
        return signum, out_of_time
    flags = torch.tensor([signum or 0, int(out_of_time)], device=device if device.type == "cuda" else "cpu")
    tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
    return int(flags[0]) or None, bool(flags[1])


def _gather_rng(generators: list[torch.Generator], dist: Dist) -> dict[str, torch.Tensor]:
    """Every rank's generator states (rank 0 writes them all into the resume point)."""
    out = {}
    for i, g in enumerate(generators):
        state = g.get_state()
        if dist.enabled:
            parts = [torch.empty_like(state) for _ in range(dist.world)]
            if tdist.get_backend() == "nccl":
                dev = torch.device("cuda", dist.local_rank)
                gpu = [p.to(dev) for p in parts]
                tdist.all_gather(gpu, state.to(dev))
                parts = [p.cpu() for p in gpu]
            else:
                tdist.all_gather(parts, state)
            for r, p in enumerate(parts):
                out[f"rng.{i}.rank{r}"] = p
        else:
            out[f"rng.{i}.rank0"] = state
    return out


def _resume(last: Path, model: nn.Module, opt: torch.optim.Optimizer, generators: list[torch.Generator],
            dist: Dist) -> tuple[int, float, float]:
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
    for i, g in enumerate(generators):
        key = f"rng.{i}.rank{dist.rank}"
        legacy = {0: ("sampler_rng", "rng")}.get(i, ())
        state = tensors.get(key)
        for name in legacy:  # resume points written before the engine
            state = tensors.get(name, state) if state is None else state
        if state is not None and info.get("world", 1) == dist.world:
            g.set_state(state)
        else:  # another number of processes: re-derive this rank's stream from (seed, rank, step)
            g.manual_seed(rank_seed(step + 1, dist.rank) + i)
            if dist.is_main:
                print(f"warning: {last} was written by {info.get('world', 1)} process(es), this run has "
                      f"{dist.world}: episodes are re-seeded from the step", file=sys.stderr)
    return step, best, float(info.get("elapsed", 0.0))


def finished(run_dir: Path) -> bool:
    """A run that reached its last step (final/ is written last) and kept a best model."""
    return (run_dir / "final" / "config.json").is_file() and (run_dir / "best" / "config.json").is_file()
