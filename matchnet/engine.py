"""The one training loop: every model that trains (Matching Networks on images or sentences, the baselines)
runs through `fit`, on one process or many (torchrun + DistributedDataParallel).

The engine owns what every model needs: the learning-rate schedule, autocast, gradient clipping, the
optimizer step, the progress bar, validation (always in eval mode, without gradients, the model's mode
restored after), `best/` by the first validation metric, `final/`, the resume point `last.safetensors`
(written atomically, checked against the config it was started with), the JSONL log, the run record, and
Ctrl-C/SIGTERM (save a resume point, exit with one line). A task owns only what differs (see `Task`).

Distributed (the process group: matchnet.distributed): the model is wrapped in DistributedDataParallel; the
engine seeds each rank's generators (rank_seed(seed, rank)) and hands each rank its share of the task's global
batch (a Shard); rank 0 decides whether to resume and alone validates, logs (loss and accuracy averaged over
the ranks), writes checkpoints and shows progress. The resume point holds every rank's generators and global
torch RNG; resumed on another number of processes, each rank re-seeds from (seed, rank, step).

The contract of the draws: at every step rank r draws shard.size items from its own streams, and its streams
are exactly those of one process with seed rank_seed(seed, r) drawing shard.size items per step; rank 0's
are those of a 1-process run with the config's seed. BatchNorm statistics stay per rank by default (what DDP does): every
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
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from safetensors import SafetensorError
from torch import nn
from tqdm import tqdm

from . import atomic
from .checkpoint import CheckpointError, load_state, optimizer_from_flat, optimizer_to_flat, save_state
from .config import LoopConfig
from .distributed import (Dist, agree_stop, all_gather_ints, all_mean, barrier, broadcast_text, current_dist,
                          gather_states, rank_seed, resume_seed)
from .rundir import (RUNTIME_KEYS, RunLock, TrainingError, check_finite_state, check_resume_config,  # noqa: F401
                     check_run_name, last_finite_loss, prepare_run_dir, read_log)


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


# -- what a task provides ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """This rank's part of a step: `size` of the task's `global_batch` items (global_batch // world), for
    `step` (0-based, the step whose batch is drawn)."""

    rank: int = 0
    world: int = 1
    size: int = 1
    step: int = 0


class Task(Protocol):
    """What one kind of model brings to the loop.

    model:        the nn.Module to train (unwrapped; the engine wraps it in DDP when distributed).
    generators:   the random generators that draw training batches (torch.Generator, or anything with
                  get_state/set_state/manual_seed). The engine seeds them, rank r's stream i with
                  rank_seed(cfg.seed, r) + i, before step 1 of a fresh run, and saves them in the resume point.
    global_batch: the items (episodes, images, pairs) one step draws over all processes; batch_key names the
                  config key it comes from, for the message when it cannot be split over the processes.
    batch(shard): this rank's share of the next step's training batch: shard.size items (global_batch //
                  world) drawn from this rank's generators; shard.step, shard.rank, shard.world for the rest.
    loss(net, batch): (loss to minimise, training accuracy in [0, 1]); `net` may be the DDP wrapper: call it,
                  not task.model, so gradients are all-reduced. The log shows both averaged over the ranks.
    validate(model): {metric: value}, higher is better; the first one selects best/. Runs in eval mode.
    save(model, folder): write a checkpoint folder (best/, final/).
    """

    model: nn.Module
    generators: list[Any]
    global_batch: int
    batch_key: str

    def batch(self, shard: Shard) -> Any: ...
    def loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]: ...
    def validate(self, model: nn.Module) -> dict[str, float]: ...
    def save(self, model: nn.Module, folder: Path) -> None: ...


@dataclass
class FunctionTask:
    """A Task from plain functions (every task in the package builds its own this way)."""

    model: nn.Module
    generators: list[Any]
    batch: Callable[[Shard], Any]
    loss: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]
    validate: Callable[[nn.Module], dict[str, float]]
    save: Callable[[nn.Module, Path], None]
    log_extras: Callable[[nn.Module], dict[str, float]] | None = None
    global_batch: int = 1
    batch_key: str = "meta_batch"


def run_validation(model: nn.Module, validate: Callable[[nn.Module], dict[str, float]]) -> dict[str, float]:
    """validate(model) under eval mode and no_grad: BatchNorm uses (and keeps) its running statistics."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return validate(model)
    finally:
        model.train(was_training)


def learning_rate(cfg: LoopConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 0 (or `step`: halved four times, at 1/5, 2/5, 3/5 and 4/5 of the
    steps, so the last fifth runs at lr / 16; or `constant`)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / cfg.steps))
    if cfg.schedule == "step":
        return cfg.lr * 0.5 ** min(4, 5 * step // cfg.steps)
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

def fit(task: Task, cfg: LoopConfig, run_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Train task.model in run_dir, which this run owns (locked, rank 0) for its whole life; see _fit."""
    with RunLock(run_dir, enabled=current_dist().is_main):
        return _fit(task, cfg, run_dir, **options)


def _fit(task: Task, cfg: LoopConfig, run_dir: str | os.PathLike, *, resume: bool = True,
         stop_after: int | None = None, record: dict[str, Any] | None = None,
         started: float | None = None) -> dict[str, Any]:
    """Train task.model for cfg.steps (or `stop_after` more steps, as a crash would); returns a summary.

    Reads cfg's LoopConfig fields (matchnet.config). Writes run_dir/{train_config.json, run.json, log.jsonl,
    last.safetensors, best/, final/} (rank 0 only). Under torchrun rank 0 decides whether the run resumes; a
    rank that cannot read the same resume point, or restores another step, stops every rank with one message.
    `started`: a time.perf_counter() from before data loading, so that the log's times count start-up too.
    """
    t0 = time.perf_counter() if started is None else started
    run_dir = Path(run_dir)
    dist = current_dist()
    main = dist.is_main
    model = task.model
    device = next(model.parameters()).device
    shard = _shard(task, dist)
    settings = config_dict(cfg)
    last, log = run_dir / "last.safetensors", run_dir / "log.jsonl"
    resuming = _agree_resume(resume and last.is_file(), last, dist)
    error = None
    if main:
        try:
            check_run_name(cfg.name)
            prepare_run_dir(run_dir, fresh=not resuming, settings=settings, restart=not resume,
                            defaults=_defaults(cfg))
        except (TrainingError, ValueError) as e:
            error = str(e)
    _raise_on_every_rank(broadcast_text(error, dist))

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           fused=device.type == "cuda")
    step, best, elapsed = 0, -math.inf, 0.0
    if resuming:
        step, best, elapsed = _resume_agreed(last, model, opt, task.generators, dist, cfg.seed)
    else:
        _seed(task.generators, cfg.seed, dist)
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
        if cfg.sync_bn and device.type == "cuda":
            # replaces the BatchNorm children in place (the top module is not a BatchNorm): task.model stays it
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                  else None)

    amp = cfg.amp and device.type == "cuda"
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    sums = torch.zeros(2, device=device)  # loss, accuracy: summed on the device, no host sync per step
    since, first_step = 0, step + 1
    out_of_time, stopped = False, None

    def checkpoint() -> None:
        rng = _gather_rng(task.generators, device, dist)  # a collective: every rank takes part, rank 0 writes
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
            batch = task.batch(replace(shard, step=step))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, acc = task.loss(net, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = None
            if cfg.grad_clip > 0:
                norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            guard.step(step + 1, loss, norm)
            sums += torch.stack([loss.detach().float(), acc.detach().float()])
            since += 1
            step += 1
            bar.update(1)
            stopped, out_of_time = agree_stop(
                stop.signal, cfg.time_limit > 0 and time.perf_counter() - t0 > cfg.time_limit, dist)
            validate_now = step % cfg.val_every == 0 or step == cfg.steps or out_of_time
            log_now = step % cfg.log_every == 0 or step == end or validate_now or stopped
            if log_now or step % cfg.checkpoint_every == 0:  # before anything is logged or written: a NaN never
                guard.check(step, model, opt, dist, cfg, bar)  # reaches a file (a collective under torchrun)
            if log_now:  # a collective: every rank's share of the loss and accuracy, not rank 0's alone
                mean_loss, mean_acc = all_mean(sums / since, dist).tolist()
                sums.zero_()
                averaged, since = [step - since + 1, step], 0
            if main and log_now:
                entry = {"step": step, "steps_averaged": averaged, "loss": mean_loss, "train_acc": 100 * mean_acc,
                         "lr": lr}
                if getattr(task, "log_extras", None) is not None:
                    entry.update(task.log_extras(model))
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
    barrier(dist)
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


def _guard_write(path: Path, write: Callable[[], Any]) -> None:
    """A full disk or a folder that became unwritable is a one-line TrainingError naming the file."""
    try:
        write()
    except (OSError, SafetensorError) as e:
        raise TrainingError(f"cannot write {path} ({getattr(e, 'strerror', None) or e}); free some disk space "
                            "or set out_dir to another folder, then run the same command to resume") from None


def _defaults(cfg: Any) -> dict[str, Any]:
    """The config class's defaults: a key a run recorded before it existed, now at its default, is no change."""
    try:
        return config_dict(type(cfg)())
    except TypeError:
        return {}


def _raise_on_every_rank(error: str | None) -> None:
    if error is not None:
        raise TrainingError(error)


def _shard(task: Task, dist: Dist) -> Shard:
    """This rank's share of the task's global batch; one that does not split evenly fails before step 1."""
    total = getattr(task, "global_batch", 1)
    if total % dist.world:
        raise TrainingError(f"{getattr(task, 'batch_key', 'the batch')} = {total} per step cannot be split evenly "
                            f"over {dist.world} processes; choose a multiple of {dist.world}")
    return Shard(dist.rank, dist.world, total // dist.world)


def _seed(generators: list[Any], seed: int, dist: Dist) -> None:
    """A fresh run: rank r's stream i starts at rank_seed(seed, r) + i (rank 0: what one process draws). Rank 0
    leaves the global torch RNG (dropout) where the model's initialisation left it; the others re-seed it, so
    that no two ranks drop the same units."""
    for i, g in enumerate(generators):
        g.manual_seed(rank_seed(seed, dist.rank) + i)
    if dist.rank > 0:
        torch.manual_seed(rank_seed(seed, dist.rank))


def _agree_resume(has_point: bool, last: Path, dist: Dist) -> bool:
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


def _resume_agreed(last: Path, model: nn.Module, opt: torch.optim.Optimizer, generators: list[Any], dist: Dist,
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


def _rng_states(generators: list[Any], device: torch.device) -> dict[str, torch.Tensor]:
    """This rank's random state: the task's generators, then the global torch RNG (dropout) on the CPU and the
    model's GPU."""
    states = {f"rng.{i}": g.get_state() for i, g in enumerate(generators)}
    states["torch_rng.cpu"] = torch.get_rng_state()
    if device.type == "cuda":
        states["torch_rng.cuda"] = torch.cuda.get_rng_state(device)
    return states


def _gather_rng(generators: list[Any], device: torch.device, dist: Dist) -> dict[str, torch.Tensor]:
    """Every rank's random states, named NAME.rank<r> (rank 0 writes them all into the resume point)."""
    mine = _rng_states(generators, device)
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


def finished(run_dir: Path) -> bool:
    """A run that reached its last step (final/ is written last) and kept a best model."""
    return (run_dir / "final" / "config.json").is_file() and (run_dir / "best" / "config.json").is_file()
