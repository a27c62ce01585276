"""`train/run.py rebuild --device cpu` end to end on a tiny checkout: killed once mid-training, run again, it
resumes; old vs new decides what ships; every rebuilt record names a command that exists."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from matchnet.checkpoint import save_model  # noqa: E402
from train import compare, rebuild  # noqa: E402
from dist_worker import SLOW_STEP_RUN_CLI  # noqa: E402

# train/run.py's main, with the synthetic glyphs (tests/dist_worker.py) for data and, with SLOW_STEP, one slow
# step, so that the test can stop it mid-training at a known point.
CHILD = """
import os, sys, time
sys.path[:0] = [{root!r}, {tests!r}]
import matchnet.data, matchnet.train as T
from dist_worker import glyph_splits
matchnet.data.load_splits = T.load_splits = lambda *a, **k: glyph_splits(40)
""" + SLOW_STEP_RUN_CLI.replace("{sleep}", "3")

TINY = """name = "tiny"
dataset = "omniglot"
split = "vinyals"
way = 5
shot = 1
query = 2
meta_batch = 1
steps = 12
hidden = 8
val_tasks = [[5, 1], [20, 1]]
val_every = 4
val_episodes = 10
log_every = 1
checkpoint_every = 4
progress = false
"""


def child(cwd: Path, root: Path, **env: str) -> subprocess.Popen:
    script = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), run=str(ROOT / "train" / "run.py"))
    args = ["rebuild", "--device", "cpu", "--root", str(root), "--episodes", "20"]
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def blank(cfg):
    """A model whose weights are all zero: every image looks alike to it, so it scores chance."""
    model = cfg.model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def log_steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()]


def test_rebuild_on_a_cpu_is_killed_resumes_and_ships_by_validation(tmp_path):
    root, work = tmp_path / "repo", tmp_path / "work"
    (root / "train" / "configs").mkdir(parents=True)
    work.mkdir()
    toml = root / "train" / "configs" / "tiny.toml"
    toml.write_text(TINY)
    cfg = rebuild.TrainConfig.from_toml(toml)
    save_model(blank(cfg), root / "assets" / "tiny")  # the "old" shipped model: at chance on val

    first = child(work, root, SLOW_STEP="7")
    assert first.stdout.readline().strip().startswith("rebuild plan")
    while (line := first.stdout.readline()) and line.strip() != "STEP":
        pass
    first.send_signal(signal.SIGTERM)  # during step 7: the engine finishes it, saves a resume point, stops
    out, err = first.communicate(timeout=120)
    assert first.returncode != 0 and "Traceback" not in err, err
    run = work / "runs" / "tiny"
    state = json.loads((work / "runs" / "rebuild_state.json").read_text())
    assert state["tiny"]["done"] == []  # nothing recorded that did not happen
    assert log_steps(run) == list(range(1, 8))
    assert not (root / "assets" / "tiny" / "training.json").exists()

    second = child(work, root)
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    assert "resuming at step 7" in out and "left at this run's measured pace" in out
    assert log_steps(run) == list(range(1, 13))  # no step twice
    assert json.loads((run / "run.json").read_text())["first_step_this_session"] == 8
    state = json.loads((work / "runs" / "rebuild_state.json").read_text())["tiny"]
    assert state["done"] == ["trained", "evaluated", "compared", "shipped"]
    assert state["train_images"] == 12 * 5 * 3 and state["train_seconds"] > 0 and state["shipped"] == "new"
    shipped = root / "assets" / "tiny"
    assert (shipped / "model.safetensors").read_bytes() == (run / "best" / "model.safetensors").read_bytes()
    comparison = json.loads((shipped / "comparison.json").read_text())
    assert comparison == json.loads((run / "comparison.json").read_text())
    assert comparison["shipped"] == "new" and comparison["selection_metric"] == "val_5w1s"
    for which in ("old", "new"):
        assert set(comparison[which]["val"]) == {"val_5w1s", "val_20w1s"}
        assert set(comparison[which]["test"]) == {"5w1s", "5w5s", "20w1s", "20w5s"}
    assert comparison["new"]["val"]["val_5w1s"]["mean"] >= comparison["old"]["val"]["val_5w1s"]["mean"]
    training = json.loads((shipped / "training.json").read_text())
    assert training["torch"] == torch.__version__ and "threads" in training["hardware"]
    assert rebuild.check_command(root, training["command"]) is None
    assert rebuild.check_command(root, training["train_command"]) is None
    assert "Old vs new" in (root / "docs" / "RESULTS.md").read_text()
    summary = json.loads((work / "runs" / "rebuild_summary.json").read_text())
    assert summary["jobs"]["tiny"]["shipped"] == "new" and summary["seconds_this_session"] > 0

    again = child(work, root)  # finished phases are not redone
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and "tiny: up to date" in out, err

    # the rule the other way: a worse new model leaves the old one in place
    splits = __import__("dist_worker").glyph_splits(40)
    save_model(blank(cfg), tmp_path / "worse")
    record = compare.compare("tiny", cfg, tmp_path / "worse", shipped, splits, torch.device("cpu"), 20)
    assert record["shipped"] == "old" and "the old model stays" in record["reason"]


def test_check_command_accepts_only_commands_that_exist(tmp_path):
    (tmp_path / "train" / "configs").mkdir(parents=True)
    (tmp_path / "train" / "configs" / "tiny.toml").write_text(TINY)
    ok = ["python train/run.py rebuild --device cpu --only tiny",
          "python train/run.py train --config train/configs/tiny.toml --device cpu --eval"]
    bad = ["python train/run.py rebuild --device cpu --only other", "python train/run.py fit --only tiny",
           "python train/run.py train --config train/configs/gone.toml", "python other.py train"]
    assert [rebuild.check_command(tmp_path, c) for c in ok] == [None, None]
    assert all(rebuild.check_command(tmp_path, c) for c in bad)


@pytest.mark.parametrize("record", sorted(ROOT.glob("assets/**/training.json")), ids=lambda p: p.parent.name)
def test_a_rebuilt_asset_names_a_command_torch_and_hardware(record):
    """The rule for every asset `rebuild` wrote (its training.json has rebuilt_by); older records predate it."""
    training = json.loads(record.read_text())
    if "rebuilt_by" not in training:
        return  # shipped before the rule: reported, not skipped (the lead's rebuild replaces them)
    assert rebuild.check_command(ROOT, training["command"]) is None
    assert training["torch"] and training["hardware"] and training["train_seconds"] and training["date"]


def test_records_name_checkpoints_without_machine_paths_and_tell_near_ties_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert compare.shown(tmp_path / "assets" / "m") == "assets/m"  # inside the working folder: relative
    assert compare.shown(Path("/elsewhere/assets/m")) == "assets/m"  # outside: its last two parts, never absolute
    assert compare._pcts(96.48667, 96.49100) == ("96.487", "96.491")  # was printed "96.49 < 96.49"
    assert compare._pcts(95.67, 96.08) == ("95.67", "96.08")


def test_a_config_s_data_options_reach_every_phase_and_an_old_model_at_another_side_is_scored(tmp_path,
                                                                                           monkeypatch):
    """A config with data_options = {image_size = 56} trains, evaluates and compares on 56-px images (the loader's
    default, 28, used to be read whatever the config said); the shipped model, at 28, is scored on 28-px images of
    the same episodes instead of failing as "could not be scored"."""
    calls = []

    def fake_load(dataset, split, root, download=False, **options):
        calls.append(options)
        return {"images": options.get("image_size", 28)}

    monkeypatch.setattr(rebuild, "load_splits", fake_load)
    toml = tmp_path / "c.toml"
    toml.write_text(TINY + "[data_options]\nimage_size = 56\n")
    cfg = rebuild.TrainConfig.from_toml(toml)
    cache = rebuild.SplitCache()
    assert cache(cfg) == {"images": 56} and cache(cfg) is cache(cfg) and calls == [{"image_size": 56}]
    assert cache(cfg, 28) == {"images": 28} and calls[-1] == {"image_size": 28}

    from dist_worker import glyph_splits

    small = glyph_splits(40)
    big = {k: type(v)(torch.nn.functional.interpolate(v.images.float(), scale_factor=2).to(torch.uint8), v.source,
                      v.rotation, v.names) for k, v in small.items()}
    torch.manual_seed(0)
    new = save_model(rebuild.TrainConfig.from_toml(toml).model(big["train"]), tmp_path / "new")
    old = save_model(blank(cfg), tmp_path / "old")
    assert rebuild.image_side(old) == 28 and rebuild.image_side(new) == 56 and rebuild.image_side(tmp_path) is None
    record = compare.compare("tiny", cfg, new, old, big, torch.device("cpu"), 10, old_splits=small)
    assert "error" not in record["old"] and set(record["old"]["val"]) == {"val_5w1s", "val_20w1s"}
    broken = compare.compare("tiny", cfg, new, old, big, torch.device("cpu"), 10)  # no splits at its side
    assert "could not be scored" in broken["reason"]


def test_a_plan_at_another_side_says_its_estimate_is_too_low(tmp_path):
    """The CPU estimates are measured at 28 x 28: a 56-px config's plan says so instead of a confident figure."""
    from train import costs

    toml = tmp_path / "c.toml"
    toml.write_text(TINY)
    plain = costs.train_cost(rebuild.TrainConfig.from_toml(toml))
    toml.write_text(TINY + "[data_options]\nimage_size = 56\n")
    big = costs.train_cost(rebuild.TrainConfig.from_toml(toml))
    if plain is None:
        pytest.fail("no CPU speed record to estimate from (docs/bench)")
    assert "too low for 56x56" in big.how and "too low" not in plain.how


def test_a_56px_plan_estimates_from_its_own_shipped_models_measured_times(tmp_path):
    """At a side the CPU records do not measure, the plan uses the shipped model's own training and test times
    (assets/<name>/training.json, results.json), but only where that model costs what the config's does."""
    from train import costs

    root = tmp_path / "root"
    (root / "train" / "configs").mkdir(parents=True)
    toml = root / "train" / "configs" / "tiny.toml"
    toml.write_text(TINY + "[data_options]\nimage_size = 56\n")
    cfg = rebuild.TrainConfig.from_toml(toml)
    assets = root / "assets" / "tiny"
    assets.mkdir(parents=True)
    train_config = {k: getattr(cfg, k) for k in costs.COST_KEYS} | {"data_options": {"image_size": 56}}
    (assets / "training.json").write_text(json.dumps({
        "hardware": "CPU (x86_64, 2 threads)", "train_seconds": 100.0, "train_images": 20_000,
        "train_config": train_config}))
    test_images = costs.test_images(10)
    (assets / "results.json").write_text(json.dumps({
        "hardware": "CPU (x86_64, 2 threads)", "eval_seconds": 90.0, "episodes": 10, "query_per_class": 15,
        "model": {"image_size": 56, "fce": cfg.fce, "hidden": cfg.hidden}}))
    job = rebuild.Job(toml, cfg, "x", fresh=True)
    own = costs.own_rates(cfg, assets)
    assert own["train"][0] == 200.0 and own["eval"][0] == test_images / 90.0
    steps_images = cfg.steps * rebuild.images_per_step(cfg)
    assert rebuild.cpu_seconds(job, "trained", 10) == pytest.approx(steps_images / 200.0)
    assert rebuild.cpu_seconds(job, "evaluated", 10) == pytest.approx(90.0)  # the same four columns
    val, _ = compare.work_images(cfg, 10)
    # no shipped weights: nothing old to score; with them, the old model's columns and both val tasks
    assert rebuild.cpu_seconds(job, "compared", 10) == pytest.approx(val * 90.0 / test_images)
    (assets / "model.safetensors").write_bytes(b"")
    both = (2 * val + test_images) * 90.0 / test_images
    assert rebuild.cpu_seconds(job, "compared", 10) == pytest.approx(both)
    # a shipped model of another width (or at 28 px) is not this config's cost
    toml.write_text(TINY.replace("hidden = 8", "hidden = 16") + "[data_options]\nimage_size = 56\n")
    assert costs.own_rates(rebuild.TrainConfig.from_toml(toml), assets) == {}
    toml.write_text(TINY)
    assert costs.own_rates(rebuild.TrainConfig.from_toml(toml), assets) == {}
