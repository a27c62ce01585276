"""The run folder (runs/<name>/): one run owns it, what an earlier run left there is checked before a new one
starts, and what killed writers left is removed.

- A lock (`.lock`, fcntl.flock) held for the run's whole life: a second run into the same folder is refused
  with one line naming the PID that holds it. The kernel releases it when the process dies (Ctrl-C, SIGKILL,
  a power cut), so a crashed run never leaves a stale lock behind.
- The run record (train_config.json, run.json, log.jsonl, best/, final/) is checked against the config
  whether or not the resume point last.safetensors is there: a different config is refused (`--restart`
  starts over), so a deleted resume point never lets another run overwrite the results silently.
- Temporary files of killed writers (matchnet.atomic's `.<name>.partial-<pid>-<token>`) are removed at start,
  after the lock is taken (never while another run is writing).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import torch

from .atomic import clean_partials, temp_path
from .checkpoint import CheckpointError, check_finite

try:
    import fcntl
except ImportError:  # not POSIX: no lock (the folder is then only as safe as the user's discipline)
    fcntl = None  # type: ignore[assignment]

# Options that change how a run is carried out, not what it computes: they may differ on resume.
RUNTIME_KEYS = frozenset({"device", "progress", "log_every", "checkpoint_every", "out_dir", "data_root",
                          "download", "compile", "time_limit", "val_every", "val_episodes", "name"})
RECORD = ("train_config.json", "run.json", "log.jsonl", "best", "final")  # what a run leaves, besides last
LOCK = ".lock"
# Names the engine and checkpoint writers used for temporary files before matchnet.atomic: removed at start
# too, so a folder a killed older version left behind is cleaned as well.
_LEGACY_TEMPS = ("last.safetensors.tmp", "train_config.json.tmp", "run.json.tmp", "log.jsonl.tmp",
                 "model.safetensors.tmp", "config.json.tmp")


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message names the file or key and what to do."""


def check_run_name(name: str) -> None:
    """A run's name becomes a folder under runs/: refuse anything that would land elsewhere (ValueError)."""
    bad = (not isinstance(name, str) or name.strip() in ("", ".", "..") or "/" in name or "\\" in name
           or any(ord(c) < 32 for c in name) or len(name.encode()) > 200)
    if bad:
        raise ValueError(f"name must be a plain folder name (the run is written to runs/<name>), got {name!r}: "
                         "no '/', '\\', '..' or control characters; use out_dir to write somewhere else")


def _unwritable(run_dir: Path, e: OSError) -> TrainingError:
    return TrainingError(f"cannot write to the run folder {run_dir} ({e.strerror or e}); "
                         "set out_dir to a writable folder (--set out_dir=...)")


class RunLock:
    """An exclusive lock on `run_dir/.lock` for as long as the `with` block runs (rank 0 of a run only)."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True) -> None:
        self.run_dir, self.enabled, self.fd = Path(run_dir), enabled, None

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        path = self.run_dir / LOCK
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _unwritable(self.run_dir, e) from None
        if fcntl is None:
            os.close(fd)
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "a process that is starting"
            os.close(fd)
            raise TrainingError(f"{self.run_dir} is in use by another training run ({holder}, lock file "
                                f"{path}); wait for it to finish or stop it, or choose another out_dir "
                                "(--set out_dir=...)") from None
        except OSError as e:  # a file system without locks (some network mounts): say so, go on unlocked
            os.close(fd)
            print(f"warning: cannot lock {path} ({e.strerror or e}); make sure no other run writes into "
                  f"{self.run_dir}", file=sys.stderr)
            return self
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock; the file stays (no unlink race)
            self.fd = None


def recorded_config(run_dir: Path) -> dict[str, Any] | None:
    """The config the folder's run was started with: train_config.json, else run.json's copy; None if neither."""
    for name, pick in (("train_config.json", lambda v: v), ("run.json", lambda v: v.get("config"))):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            value = pick(json.loads(path.read_text()))
        except (ValueError, RecursionError, UnicodeDecodeError, AttributeError) as e:
            raise TrainingError(f"{path}: not a readable run record ({str(e)[:120]}); pass --restart to start "
                                "the run over") from None
        if isinstance(value, dict):
            return value
    return None


def _differences(before: dict[str, Any], now: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """The keys that change what the run computes. A key the recorded run did not have (an option added to the
    config since) at its default now is no change: the old run computed exactly that."""
    defaults = defaults or {}
    differ = sorted(k for k in set(before) | set(now)
                    if k not in RUNTIME_KEYS and before.get(k, "<absent>") != now.get(k, "<absent>")
                    and not (k not in before and k in defaults and now.get(k) == defaults[k]))
    return ", ".join(f"{k}: {before.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}" for k in differ)


def check_resume_config(run_dir: Path, now: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """The config a run resumes with must compute what the run started computing; runtime keys may differ."""
    before = recorded_config(run_dir)
    said = _differences(before, now, defaults) if before is not None else ""
    if said:
        raise TrainingError(f"{run_dir}/last.safetensors was started with another config ({said}); "
                            "resume with the same settings, or pass --restart to start over")


def check_run_record(run_dir: Path, now: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """No resume point, but an earlier run's results: refuse another config; the same one starts over (a line)."""
    held = [name + ("/" if (run_dir / name).is_dir() else "") for name in RECORD if (run_dir / name).exists()]
    if not held:
        return
    before = recorded_config(run_dir)
    last = run_dir / "last.safetensors"
    why = "is a broken link" if last.is_symlink() else "is missing"
    if before is None:
        raise TrainingError(f"{run_dir} holds an earlier run ({', '.join(held)}) without its train_config.json, "
                            f"and last.safetensors {why}; pass --restart to replace that run, or choose "
                            "another out_dir (--set out_dir=...)")
    said = _differences(before, now, defaults)
    if said:
        raise TrainingError(f"{run_dir} holds a run started with another config ({said}) and its resume point "
                            f"last.safetensors {why}; pass --restart to replace that run ({', '.join(held)}), "
                            "or choose another out_dir (--set out_dir=...)")
    print(f"warning: {last} {why}: starting the run in {run_dir} over with the same config (its "
          f"{', '.join(held)} are replaced)", file=sys.stderr)


def prepare_run_dir(run_dir: Path, fresh: bool, settings: dict[str, Any] | None = None,
                    restart: bool = False, defaults: dict[str, Any] | None = None) -> None:
    """Check the folder takes files, remove killed writers' temporary files, check what an earlier run left.

    fresh: no resume point is used (--restart, or none there); the earlier run's files are then removed, after
    check_run_record has refused a different config (unless `restart`: --restart replaces whatever is there).
    Call with the folder's RunLock held."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = temp_path(run_dir / "write-test")  # the partial-file pattern: the next start removes it
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise _unwritable(run_dir, e) from None
    clean_partials(run_dir)
    for tmp in run_dir.rglob("*.tmp"):
        if tmp.name in _LEGACY_TEMPS:
            tmp.unlink(missing_ok=True)
    if not fresh:
        check_resume_config(run_dir, settings or {}, defaults)
        return
    if not restart and settings is not None:
        check_run_record(run_dir, settings, defaults)
    # --restart (or no resume point): nothing of an older run may be resumed or mistaken for this one
    for name in ("last.safetensors", "log.jsonl", "train_config.json", "run.json"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("best", "final"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def read_log(log: Path, upto: int) -> list[dict]:
    """The log's records up to step `upto`; a torn last line (a full disk, a kill mid-write) is skipped."""
    if not log.exists():
        return []
    records = []
    for n, line in enumerate(log.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            print(f"warning: {log}: line {n} is incomplete (an interrupted write); skipped", file=sys.stderr)
            continue
        if isinstance(record, dict) and record.get("step", 0) <= upto:
            records.append(record)
    return records


def check_finite_state(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A resume point whose weights or optimizer state hold NaN or Inf would train NaN steps: refuse it."""
    try:
        check_finite(tensors, path)
    except CheckpointError as e:
        raise TrainingError(f"{e}; pass --restart to start over (with a lower lr)") from None


def last_finite_loss(history: list[dict]) -> tuple[int, float] | None:
    """(step, loss) of the last log record whose loss is a finite number."""
    for record in reversed(history):
        loss = record.get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            return int(record.get("step", 0)), float(loss)
    return None
