"""The one training loop: every model that trains (Matching Networks on images or sentences, the baselines)
runs through `fit`, on one process or many (torchrun + DistributedDataParallel).

The engine owns what every model needs: the learning-rate schedule, autocast, gradient clipping, the
optimizer step, the progress bar, validation (always in eval mode, without gradients, the model's mode
restored after), `best/` by the first validation metric, `final/`, the resume point `last.safetensors`
(written atomically, checked against the config it was started with), the JSONL log, the run record, and
Ctrl-C/SIGTERM (save a resume point, exit with one line), and stopping a diverged run. A task owns only what
differs (see `Task`). Split out, one concept each: the run folder (matchnet.rundir: lock, record checks),
the resume point's random state and agreement (matchnet.resume), divergence (matchnet.divergence), the
processes (matchnet.distributed).

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
import time
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from safetensors import SafetensorError
from torch import nn
from tqdm import tqdm

from . import atomic
from .checkpoint import optimizer_to_flat, save_state
from .config import LoopConfig
from .cpu import use_amp
from .distributed import Dist, agree_stop, all_mean, barrier, broadcast_text, current_dist
from .divergence import FiniteGuard
from .resume import agree_resume, gather_rng, resume_agreed, seed_streams
from .rundir import RunLock, TrainingError, check_run_name, last_finite_loss, prepare_run_dir, read_log


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}, {n} thread{'s' if n != 1 else ''})"


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
    resuming = agree_resume(resume and last.is_file(), last, dist)
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
        step, best, elapsed = resume_agreed(last, model, opt, task.generators, dist, cfg.seed)
    else:
        seed_streams(task.generators, cfg.seed, dist)
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

    amp = use_amp(cfg.amp, device)  # CUDA, and CPUs with bf16 units (matchnet.cpu)
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    sums = torch.zeros(2, device=device)  # loss, accuracy: summed on the device, no host sync per step
    since, first_step = 0, step + 1
    out_of_time, stopped = False, None
    val_seconds = 0.0  # the last validation's duration: time_limit keeps room for the final validation

    def checkpoint() -> None:
        rng = gather_rng(task.generators, device, dist)  # a collective: every rank takes part, rank 0 writes
        if not main:
            return
        opt_tensors, opt_info = optimizer_to_flat(opt)
        tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()}, **opt_tensors, **rng}
        info = {"step": step, "best": best, "optimizer": opt_info, "world": dist.world,
                "elapsed": time.perf_counter() - t0}
        _guard_write(last, lambda: save_state(last, tensors, info))

    # smoothing=0: the rate is this run's average, validations included; tqdm's default moving average put
    # the ETA at hours for the steps after each validation
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, unit="step", smoothing=0,
               disable=not (cfg.progress and main))
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
                stop.signal, cfg.time_limit > 0 and time.perf_counter() - t0 + val_seconds > cfg.time_limit, dist)
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
                    started_val = time.perf_counter()
                    scores = run_validation(model, task.validate)
                    val_seconds = time.perf_counter() - started_val
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


def finished(run_dir: Path) -> bool:
    """A run that reached its last step (final/ is written last) and kept a best model."""
    return (run_dir / "final" / "config.json").is_file() and (run_dir / "best" / "config.json").is_file()
