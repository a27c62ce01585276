"""The one training engine: validation in eval mode, resume and its checks, signals, config checks up front,
determinism, and data-parallel training on 2 CPU processes (gloo) equal to one process."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import dist_worker
from dist_worker import config, fixed_task, glyph_splits
from matchnet.config import ConfigError
from matchnet.engine import TrainingError, fit
from matchnet.episodes import EpisodeSampler
from matchnet.train import TrainConfig, train, validate

ROOT = Path(__file__).resolve().parents[1]


def bn_buffers(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_validation_leaves_batchnorm_and_the_mode_alone(tmp_path, mode):
    splits = glyph_splits()
    cfg = config(tmp_path, 4)
    model = cfg.model()
    model.train(mode == "train")
    # running statistics that differ from the validation batches' own statistics
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if "running_mean" in k:
                v.fill_(0.3)
    before = bn_buffers(model)
    scores = validate(model, cfg, splits["val"])
    assert model.training == (mode == "train")
    for k, v in bn_buffers(model).items():
        assert torch.equal(v, before[k]), k
    # the same weights give the same accuracy whatever mode the model was in before
    model.train(mode != "train")
    assert validate(model, cfg, splits["val"]) == scores


def test_a_run_resumes_exactly_and_logs_which_steps_it_averaged(tmp_path):
    splits = glyph_splits()
    straight = config(tmp_path / "a", 4)
    train(straight, splits=splits)
    crashed = config(tmp_path / "b", 4)
    train(crashed, splits=splits, stop_after=2)
    train(crashed, splits=splits)
    a, b = (load_file(str(c.run_dir / "final" / "model.safetensors")) for c in (straight, crashed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (crashed.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert log[2]["steps_averaged"] == [3, 3]
    assert log[3]["time"] >= log[1]["time"]  # wall time continues across the resume
    assert json.loads((crashed.run_dir / "run.json").read_text())["first_step_this_session"] == 3


def test_resume_refuses_another_config_and_restart_starts_clean(tmp_path):
    splits = glyph_splits()
    cfg = config(tmp_path, 4)
    train(cfg, splits=splits, stop_after=2)
    with pytest.raises(TrainingError, match=r"lr: 0\.005 -> 0\.01.*--restart"):
        train(config(tmp_path, 4, lr=0.01), splits=splits)
    with pytest.raises(TrainingError, match="hidden: 8 -> 16"):
        train(config(tmp_path, 4, hidden=16), splits=splits)
    assert json.loads((cfg.run_dir / "train_config.json").read_text())["lr"] == 0.005  # not rewritten
    train(config(tmp_path, 4, log_every=2), splits=splits)  # a runtime option may change
    (cfg.run_dir / "best" / "marker").write_text("old run")
    train(config(tmp_path, 2, lr=0.01), splits=splits, resume=False, stop_after=1)  # --restart
    assert not (cfg.run_dir / "best").exists() and not (cfg.run_dir / "final").exists()
    assert json.loads((cfg.run_dir / "train_config.json").read_text())["lr"] == 0.01


@pytest.mark.parametrize("damage", ["empty", "truncated", "foreign"])
def test_a_damaged_resume_point_names_the_file_and_restart(tmp_path, damage):
    splits = glyph_splits()
    cfg = config(tmp_path, 4)
    train(cfg, splits=splits, stop_after=2)
    last = cfg.run_dir / "last.safetensors"
    if damage == "empty":
        last.write_bytes(b"")
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[:300])
    else:
        from safetensors.torch import save_file
        save_file({"x": torch.zeros(3)}, str(last), metadata={"info": json.dumps({"step": 2, "best": 0.0,
                                                                                "optimizer": {}})})
    with pytest.raises(TrainingError, match=r"last\.safetensors.*--restart"):
        train(cfg, splits=splits)


def test_a_torn_log_line_is_skipped_with_a_warning(tmp_path, capsys):
    splits = glyph_splits()
    cfg = config(tmp_path, 4)
    train(cfg, splits=splits, stop_after=2)
    with (cfg.run_dir / "log.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 0.')  # a full disk cut this line short
    (cfg.run_dir / "last.safetensors.tmp").write_bytes(b"half")  # a killed write's temp file
    train(cfg, splits=splits)
    assert "line 3 is incomplete" in capsys.readouterr().err
    assert [json.loads(x)["step"] for x in (cfg.run_dir / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert not list(cfg.run_dir.rglob("*.tmp"))


def test_an_unwritable_run_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrainingError, match="cannot write to the run folder .*out_dir"):
        train(config(blocker / "run", 2), splits=glyph_splits())


@pytest.mark.parametrize("change, message", [
    (dict(val_tasks=[[1000, 1]]), "1000-way needs 1000 classes"),
    (dict(val_query=20), "val_query 20 exceed"),
    (dict(val_query=0), "val_query must be at least 1"),
    (dict(val_tasks=[["a", 1]]), "val_tasks should be a list of"),
    (dict(train_on="foo"), "train_on must be one of"),
    (dict(train_on="test"), "every test number meaningless"),
    (dict(hidden=0), "hidden must be at least 1"),
    (dict(scale=0.0), "scale must be positive"),
    (dict(way=200), "way = 200 needs 200 training classes"),
])
def test_bad_configs_fail_before_step_one(tmp_path, change, message):
    values = {**vars(config(tmp_path, 4)), **change}
    with pytest.raises(ValueError, match=message):
        train(TrainConfig.from_dict(values), splits=glyph_splits())
    assert not (tmp_path / "last.safetensors").exists()


def test_config_files_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        TrainConfig.from_toml(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("way = [1,\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        TrainConfig.from_toml(bad)
    bad.write_text('hidden = "64"\n')
    with pytest.raises(ConfigError, match='bad.toml: hidden should be int'):
        TrainConfig.from_toml(bad)


@pytest.fixture
def restore_determinism():
    """train(deterministic=True) turns torch's global flag on: turn it back off even when the test fails."""
    before = torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def test_deterministic_runs_log_identical_losses(tmp_path, restore_determinism):
    splits = glyph_splits()
    logs = []
    for name in ("a", "b"):
        cfg = config(tmp_path / name, 4, deterministic=True)
        train(cfg, splits=splits)
        logs.append([json.loads(x)["loss"] for x in (cfg.run_dir / "log.jsonl").read_text().splitlines()])
    assert torch.are_deterministic_algorithms_enabled()
    assert logs[0] == logs[1]


def test_fce_training_episodes_present_the_support_set_in_random_order():
    split = glyph_splits()["train"]
    plain = EpisodeSampler(split, 5, 2, 1, seed=3).sample(4)
    shuffled = EpisodeSampler(split, 5, 2, 1, seed=3, shuffle_support=True).sample(4)
    assert torch.equal(plain.support_labels[0], torch.arange(5).repeat_interleave(2))  # class by class
    assert not torch.equal(shuffled.support_labels, plain.support_labels)
    for e in range(4):  # the same examples, each still with its own label
        for label in range(5):
            a = plain.support[e][plain.support_labels[e] == label].sort(0).values
            b = shuffled.support[e][shuffled.support_labels[e] == label].sort(0).values
            assert torch.equal(a, b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(out: Path, mode: str) -> None:
    mp.spawn(dist_worker.run, args=(2, free_port(), str(out), mode), nprocs=2, join=True)


def test_two_ranks_with_half_the_episodes_each_equal_one_process(tmp_path):
    spawn(tmp_path / "ddp", "equivalence")
    ddp = load_file(str(tmp_path / "ddp" / "params.safetensors"))
    cfg = config(tmp_path / "one", 2)
    task, _ = fixed_task(cfg, rank=0, world=2, halves=True)
    fit(task, cfg, cfg.run_dir, resume=False)
    one = task.model.state_dict()
    # A convolution's bias right before BatchNorm has a true gradient of zero (BN subtracts the batch mean), so
    # what reaches Adam is float noise, which Adam scales up to +-lr: it differs between any two summation
    # orders. Every other parameter must agree.
    noise = {f"encoder.net.{i}.0.bias" for i in range(4)}
    params = {name for name, _ in task.model.named_parameters()} - noise
    assert len(params) == 12 and all(torch.allclose(ddp[k], one[k], atol=1e-6, rtol=1e-5) for k in params)
    start = cfg.model().state_dict()
    assert any(not torch.allclose(one[k], start[k]) for k in params)  # it did train
    # the log shows the loss and accuracy of the whole step (both ranks' shares), as the one process logs them
    logs = [[json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()] for d in (tmp_path / "ddp", cfg.run_dir)]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2]
    for ddp_entry, one_entry in zip(*logs):
        assert ddp_entry["loss"] == pytest.approx(one_entry["loss"], rel=1e-5)
        assert ddp_entry["train_acc"] == pytest.approx(one_entry["train_acc"], rel=1e-5)


def test_a_two_rank_run_resumes_after_a_crash(tmp_path):
    spawn(tmp_path / "straight", "straight")
    spawn(tmp_path / "crashed", "crash")
    info = json.loads((tmp_path / "crashed" / "run.json").read_text())
    assert info["steps"] == 2 and info["world_size"] == 2
    spawn(tmp_path / "crashed", "resume")
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_saves_a_resume_point_and_says_one_line(tmp_path):
    """SIGINT mid-run: the step in progress finishes, a resume point is written at it, train() returns."""
    script = (
        "import sys, json; sys.path[:0] = [%r, %r]\n"
        "from dist_worker import config, glyph_splits\n"
        "from matchnet.train import train\n"
        "cfg = config(%r, 100000, checkpoint_every=100000, val_every=100000)\n"
        "print(json.dumps(train(cfg, splits=glyph_splits())))\n"
    ) % (str(ROOT), str(ROOT / "tests"), str(tmp_path / "run"))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["interrupted"] and summary["steps"] >= 2
    from matchnet.checkpoint import load_state
    assert load_state(tmp_path / "run" / "last.safetensors")[1]["step"] == summary["steps"]  # nothing lost


def cli():
    import importlib.util
    spec = importlib.util.spec_from_file_location("matchnet_cli", ROOT / "train" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_errors_are_one_line_before_any_work(tmp_path, capsys):
    run = cli()
    shipped = str(ROOT / "assets" / "omniglot-vinyals")
    assert run.main(["eval", "--checkpoint", shipped, "--episodes", "0"]) == 2
    assert "error: --episodes must be at least 1, got 0" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run.main(["eval", "--checkpoint", shipped, "--out", str(blocker / "r.json"),
                     "--data-root", str(tmp_path / "nodata")]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "choose another --out" in err and "Traceback" not in err
    assert run.main(["eval", "--checkpoint", str(tmp_path / "nosuch")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    assert run.main(["train", "--config", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_set_values_take_the_type_of_their_key():
    from matchnet.config import parse_sets
    sets = parse_sets(["name=2024", "steps=30", "val_tasks=[[5, 1]]", "fce=true", "lr=1e-3"], TrainConfig)
    assert sets == {"name": "2024", "steps": 30, "val_tasks": [[5, 1]], "fce": True, "lr": 1e-3}
    with pytest.raises(ConfigError, match="key=value"):
        parse_sets(["steps"], TrainConfig)


def test_time_limit_keeps_room_for_the_final_validation(tmp_path, monkeypatch):
    """A fake clock: each step costs 1 s, each validation 10 s. With a 40 s limit and validation every 5 steps,
    the run must stop early enough that the final validation (as long as the last one) ends inside the limit,
    and never starts training past it."""
    import matchnet.engine as engine

    clock = [0.0]
    monkeypatch.setattr(engine.time, "perf_counter", lambda: clock[0])
    cfg = TrainConfig(name="clock", way=5, shot=1, query=3, meta_batch=1, steps=1000, hidden=8, warmup_steps=0,
                      val_tasks=[[5, 1]], val_every=5, val_episodes=4, val_query=3, log_every=1000,
                      checkpoint_every=1000, device="cpu", out_dir=str(tmp_path / "run"), progress=False,
                      time_limit=40.0)
    splits = glyph_splits()
    import matchnet.train as mtrain

    real_sample = EpisodeSampler.sample

    def timed_sample(self, episodes=1):
        clock[0] += 1.0  # a training step's worth of time, counted when its batch is drawn
        return real_sample(self, episodes)

    real_validate = mtrain.validate

    def timed_validate(model, c, val_split):
        clock[0] += 10.0
        return real_validate(model, c, val_split)

    monkeypatch.setattr(EpisodeSampler, "sample", timed_sample)
    monkeypatch.setattr(mtrain, "validate", timed_validate)
    summary = train(cfg, splits=splits)
    assert summary["stopped_at_time_limit"]
    # steps 1-5 (5 s) + val (10 s) = 15 s; steps 6-10 -> 20 s + val -> 30 s; then the run may take steps only
    # while elapsed + 10 s (the last validation) stays within 40 s: it stops at 30 + 1 = 31 s and validates.
    assert summary["seconds"] <= cfg.time_limit + 1.0, summary
    assert summary["steps"] == 11, summary
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "val_5w1s" in log[-1] and log[-1]["step"] == 11
