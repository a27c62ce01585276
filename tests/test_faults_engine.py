"""Faults of the training engine that used to pass silently (issue 24): a run that diverges, a run folder whose
resume point is gone, two runs in one folder, temporary files a killed writer left, signals during start-up,
and hostile configs (a name that leaves runs/, absurd sizes, a config.json nested 100,000 deep, a seed beyond
64 bits). Each ends in one line naming what to do, and nothing is lost, overwritten or written with NaN."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dist_worker import SLOW_STEP_RUN_CLI, config, fixed_task, glyph_splits
from matchnet import atomic
from matchnet.checkpoint import CheckpointError, load_model, load_state
from matchnet.config import ConfigError
from matchnet.engine import TrainingError, fit
from matchnet.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def cli():
    spec = importlib.util.spec_from_file_location("matchnet_cli_faults_engine", ROOT / "train" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_toml(path: Path, out: Path, **change) -> Path:
    """dist_worker.config's small run as a TOML file for train/run.py."""
    values = {k: v for k, v in vars(config(out, 4)).items() if k in (
        "name", "way", "shot", "query", "meta_batch", "steps", "hidden", "lr", "val_tasks", "val_every",
        "val_episodes", "val_query", "log_every", "checkpoint_every", "device", "out_dir", "progress")}
    values.update(change)
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


@pytest.fixture
def no_data_load(monkeypatch):
    """train/run.py's `train` on the small synthetic glyphs instead of a dataset on disk."""
    monkeypatch.setattr("matchnet.train.load_splits", lambda *a, **k: glyph_splits())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# -- 1. divergence -------------------------------------------------------------------------------------------

def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def test_a_diverged_run_stops_with_one_line_and_writes_no_nan(tmp_path):
    cfg = config(tmp_path / "run", 10, lr=1e30, checkpoint_every=1, val_every=1)
    with pytest.raises(TrainingError, match=r"diverged: the loss of step 2 is not finite; the last finite loss "
                                            r"was [0-9.]+ \(logged at step 1\).*lower lr \(now 1e\+30\)") as e:
        train(cfg, splits=glyph_splits())
    assert "\n" not in str(e.value)
    run = cfg.run_dir
    assert not (run / "final").exists()  # no final/ of NaNs
    load_model(run / "best")  # the last good one: load_model refuses non-finite weights
    tensors, info = load_state(run / "last.safetensors")
    assert info["step"] == 1 and all_finite(tensors)
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1]  # the diverged step is not logged


def test_the_train_command_exits_non_zero_on_divergence(tmp_path, capsys, no_data_load):
    toml = write_toml(tmp_path / "c.toml", tmp_path / "run", steps=10)
    assert cli().main(["train", "--config", str(toml), "--set", "lr=1e30"]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: training diverged") and "--restart" in err[0]
    assert not (tmp_path / "run" / "final").exists()


class NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_a_non_finite_gradient_behind_a_finite_loss_is_caught(tmp_path):
    cfg = config(tmp_path / "run", 3, checkpoint_every=2, log_every=10, val_every=10)
    task, counter = fixed_task(cfg, rank=0, world=1, halves=False)
    plain = task.loss

    def loss(net, ep):
        value, acc = plain(net, ep)
        return (NaNGradient.apply(value) if counter[0] == 3 else value), acc
    task.loss = loss
    with pytest.raises(TrainingError, match="by step 3 the weights or the optimizer state are not finite"):
        fit(task, cfg, cfg.run_dir, resume=False)
    tensors, info = load_state(cfg.run_dir / "last.safetensors")
    assert info["step"] == 2 and all_finite(tensors)
    assert not (cfg.run_dir / "final").exists() and not (cfg.run_dir / "best").exists()


@pytest.mark.parametrize("part", ["model.", "optim."])
def test_a_resume_point_holding_nan_is_refused(tmp_path, part):
    cfg = config(tmp_path / "run", 4)
    train(cfg, splits=glyph_splits(), stop_after=2)
    last = cfg.run_dir / "last.safetensors"
    tensors, info = load_state(last)
    name = next(k for k, v in tensors.items() if k.startswith(part) and v.is_floating_point() and v.dim())
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(last), metadata={"info": json.dumps(info)})
    before = snapshot(cfg.run_dir)
    with pytest.raises(TrainingError, match=rf"last\.safetensors: tensor {name} holds 1 NaN.*diverged.*--restart"):
        train(cfg, splits=glyph_splits())
    assert snapshot(cfg.run_dir) == before


def diverging_rank(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a 2-process run with lr = 1e30 (spawned): records the error it stopped with."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as tdist

    tdist.init_process_group("gloo")
    try:
        train(config(Path(out) / "run", 10, lr=1e30, checkpoint_every=1, val_every=1), splits=glyph_splits())
        message = "finished"
    except TrainingError as e:
        message = str(e)
    finally:
        tdist.destroy_process_group()
    (Path(out) / f"rank{rank}.txt").write_text(message)


def test_two_ranks_stop_together_when_the_run_diverges(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(diverging_rank, args=(2, port, str(tmp_path)), nprocs=2, join=False)
    deadline = time.time() + 120
    while not ctx.join(timeout=1):
        if time.time() > deadline:  # a rank left waiting in a collective: the bug this test is for
            for p in ctx.processes:
                p.kill()
            raise AssertionError("a rank did not stop")
    for rank in (0, 1):
        assert "training diverged" in (tmp_path / f"rank{rank}.txt").read_text()
    tensors, _ = load_state(tmp_path / "run" / "last.safetensors")
    assert all_finite(tensors) and not (tmp_path / "run" / "final").exists()


# -- 2. the run record without its resume point ---------------------------------------------------------------

@pytest.mark.parametrize("loss", ["deleted", "dangling symlink"])
def test_results_are_not_overwritten_when_the_resume_point_is_missing(tmp_path, capsys, loss):
    splits = glyph_splits()
    cfg = config(tmp_path / "run", 4)
    train(cfg, splits=splits)
    last = cfg.run_dir / "last.safetensors"
    last.unlink()
    if loss == "dangling symlink":
        last.symlink_to(tmp_path / "gone.safetensors")
    before = snapshot(cfg.run_dir)
    with pytest.raises(TrainingError, match=r"holds a run started with another config \(lr: 0\.005 -> 0\.01\) "
                                            r"and its resume point last\.safetensors .*--restart"):
        train(config(tmp_path / "run", 4, lr=0.01), splits=splits)
    assert snapshot(cfg.run_dir) == before and (last.is_symlink() == (loss == "dangling symlink"))
    capsys.readouterr()
    train(cfg, splits=splits)  # the same config: it starts over, and says so
    assert "starting the run in" in capsys.readouterr().err
    assert [json.loads(x)["step"] for x in (cfg.run_dir / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    train(config(tmp_path / "run", 2, lr=0.01), splits=splits, resume=False)  # --restart replaces it
    assert json.loads((cfg.run_dir / "train_config.json").read_text())["lr"] == 0.01


def test_a_run_record_without_its_config_is_not_replaced(tmp_path):
    cfg = config(tmp_path / "run", 2)
    train(cfg, splits=glyph_splits())
    for name in ("last.safetensors", "train_config.json", "run.json"):
        (cfg.run_dir / name).unlink()
    before = snapshot(cfg.run_dir)
    with pytest.raises(TrainingError, match=r"holds an earlier run \(log\.jsonl, best/, final/\).*--restart"):
        train(cfg, splits=glyph_splits())
    assert snapshot(cfg.run_dir) == before


# -- 3. one run owns its folder (two real processes) ----------------------------------------------------------

CHILD = """
import os, signal, sys, time
# Ctrl-C as a terminal delivers it: a suite started in the background (nohup, `&`) hands its children SIGINT
# ignored, and a process that starts with SIGINT ignored rightly keeps it so
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path[:0] = [{root!r}, {tests!r}]
import matchnet.train as T
from dist_worker import glyph_splits

def load_splits(*a, **k):
    print("LOADING", flush=True)
    time.sleep(float(os.environ.get("SLOW_LOAD", "0")))
    return glyph_splits()
T.load_splits = load_splits

""" + SLOW_STEP_RUN_CLI.replace("{sleep}", "120")


def child(args: list[str], **env: str) -> subprocess.Popen:
    script = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), run=str(ROOT / "train" / "run.py"))
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def wait_for(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def log_steps(run: Path) -> list[int]:
    log = run / "log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(x)["step"] for x in lines if x.endswith("}")]


def test_a_second_run_into_the_same_folder_is_refused_naming_the_pid(tmp_path):
    run = tmp_path / "run"
    toml = write_toml(tmp_path / "c.toml", run, steps=8, checkpoint_every=3, val_every=8)
    first = child(["train", "--config", str(toml)], SLOW_STEP="5")  # holds its folder, in step 5
    try:
        wait_for(lambda: first.stdout.readline().strip() == "STEP", "the first run's step 5")
        second = child(["train", "--config", str(toml)])
        out, err = second.communicate(timeout=120)
        lines = error_lines(err)
        assert second.returncode == 2 and len(lines) == 1, err
        assert f"is in use by another training run (PID {first.pid} on " in lines[0]
        assert first.poll() is None  # the first run goes on, untouched
    finally:
        first.kill()  # SIGKILL: the kernel releases the lock
        first.communicate(timeout=60)
    assert log_steps(run) == [1, 2, 3, 4]
    third = child(["train", "--config", str(toml)])  # resumes from step 3: the lock is free again
    out, err = third.communicate(timeout=180)
    assert third.returncode == 0, err
    assert log_steps(run) == list(range(1, 9))  # one writer at a time: no step twice
    assert (run / "final" / "model.safetensors").is_file()


# -- 5. temporary files of killed writers ---------------------------------------------------------------------

def plant_partials(run: Path) -> list[Path]:
    planted = [atomic.temp_path(run / "last.safetensors"), atomic.temp_path(run / "best" / "model.safetensors"),
               atomic.temp_path(run / "train_config.json")]
    for p in planted:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * 1000)
    return planted


def test_partial_files_are_removed_on_resume_and_on_restart(tmp_path):
    cfg = config(tmp_path / "run", 4)
    train(cfg, splits=glyph_splits(), stop_after=2)
    keep = cfg.run_dir / "notes.tmp"  # a user's file that merely ends in .tmp
    keep.write_text("mine")
    planted = plant_partials(cfg.run_dir)
    train(cfg, splits=glyph_splits())  # resume
    assert not any(p.exists() for p in planted) and keep.read_text() == "mine"
    planted = plant_partials(cfg.run_dir)
    train(cfg, splits=glyph_splits(), resume=False, stop_after=1)  # --restart
    assert not any(p.exists() for p in planted)
    assert not [p for p in cfg.run_dir.rglob("*") if atomic.is_partial(p)]


def test_a_failed_write_in_the_run_folder_leaves_no_temporary_file(tmp_path, monkeypatch):
    real = os.replace

    def full_disk(src, dst, *a, **k):
        if Path(dst).name == "train_config.json":
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", full_disk)
    cfg = config(tmp_path / "run", 2)
    with pytest.raises(TrainingError, match=r"cannot write .*train_config\.json \(No space left on device\)"):
        train(cfg, splits=glyph_splits())
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == [".lock"]


# -- 6. signals, names, sizes, seeds ---------------------------------------------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_is_one_line(tmp_path, sig, code):
    toml = write_toml(tmp_path / "c.toml", tmp_path / "run")
    proc = child(["train", "--config", str(toml)], SLOW_LOAD="120")
    wait_for(lambda: proc.stdout.readline().strip() == "LOADING", "the data to start loading")
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    lines = error_lines(err)
    assert proc.returncode == code and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"interrupted ({'SIGTERM' if sig == signal.SIGTERM else 'Ctrl-C'})")


def test_a_second_ctrl_c_during_a_step_is_one_line(tmp_path):
    run = tmp_path / "run"
    toml = write_toml(tmp_path / "c.toml", run, steps=10)
    proc = child(["train", "--config", str(toml)], SLOW_STEP="3")
    wait_for(lambda: proc.stdout.readline().strip() == "STEP", "step 3")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # the first: finish the step, then save and stop
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)  # the second: stop at once
    out, err = proc.communicate(timeout=60)
    lines = error_lines(err)
    assert proc.returncode == 130 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("interrupted (Ctrl-C): stopped at once")
    assert log_steps(run) == [1, 2] and not [p for p in run.rglob("*") if atomic.is_partial(p)]


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", ""])
def test_a_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, monkeypatch, capsys, no_data_load, name):
    cwd = tmp_path / "a" / "b" / "c"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    toml = write_toml(tmp_path / "c.toml", Path(""), steps=1, out_dir="")
    assert cli().main(["train", "--config", str(toml), "--set", f"name={name}"]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "name must be a plain folder name" in err[0]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/b", "a/b/c", "c.toml"]


@pytest.mark.parametrize("change, message", [
    ({"hidden": 10 ** 7}, r"hidden = 10000000 gives a model of [0-9,]+ parameters"),
    ({"hidden": 20000, "fce": True}, r"hidden = 20000 gives a model of"),
    ({"meta_batch": 10 ** 6}, r"images per step; at most 100,000"),
    ({"seed": 10 ** 23}, r"seed must be between 0 and 2\*\*63-1, got 100000000000000000000000"),
    ({"seed": -1}, r"seed must be between 0 and 2\*\*63-1, got -1"),
])
def test_absurd_sizes_and_seeds_are_refused_before_allocating(tmp_path, capsys, no_data_load, change, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({**vars(config(tmp_path, 2)), **change})
    toml = write_toml(tmp_path / "c.toml", tmp_path / "run")
    sets = [f"{k}={json.dumps(v)}" for k, v in change.items()]
    assert cli().main(["train", "--config", str(toml), *sum((["--set", s] for s in sets), [])]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: ") and not (tmp_path / "run").exists()


def test_a_config_json_nested_100000_deep_is_one_line(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"config\.json: .*nested too deeply"):
        load_model(folder)
    assert cli().main(["eval", "--checkpoint", str(folder), "--data-root", str(tmp_path / "nodata")]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "nested too deeply" in err[0]


def test_eval_seed_beyond_64_bits_is_one_line(tmp_path, capsys):
    shipped = ROOT / "assets" / "omniglot-vinyals"
    assert cli().main(["eval", "--checkpoint", str(shipped), "--seed", str(10 ** 23),
                       "--data-root", str(tmp_path / "nodata"), "--out", str(tmp_path / "r.json")]) == 2
    err = error_lines(capsys.readouterr().err)
    assert err == ["error: --seed must be between 0 and 2**63-1, got 100000000000000000000000"]
    assert not (tmp_path / "r.json").exists()
