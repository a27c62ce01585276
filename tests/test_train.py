"""Training: it learns, it resumes exactly, configs are checked, the CLI explains itself, CIs are right."""
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from matchnet import evaluate, load_model
from matchnet.data import FewShotSplit, load_omniglot, omniglot_splits
from matchnet.evaluate import mean_ci95
from matchnet.train import TrainConfig, train

from conftest import synthetic_glyphs

ROOT = Path(__file__).resolve().parents[1]


def glyph_splits(classes: int = 48, seed: int = 0) -> dict:
    """Synthetic characters at 28x28: each class a few random strokes, each drawing shifted and thinned."""
    images = synthetic_glyphs(classes, seed)

    def part(ids):
        return FewShotSplit(images, torch.tensor(ids), torch.zeros(len(ids), dtype=torch.long),
                            [f"g{i}" for i in ids])
    ids = list(range(classes))
    return {"train": part(ids[:32]), "val": part(ids[32:40]), "test": part(ids[40:])}


def small_config(tmp_path, **kw) -> TrainConfig:
    base = dict(name="t", way=5, shot=1, query=5, steps=6, val_every=3, val_episodes=20, val_tasks=[[5, 1]],
                log_every=1, checkpoint_every=3, device="cpu", out_dir=str(tmp_path / "run"), progress=False)
    return TrainConfig(**{**base, **kw})


def test_training_beats_chance_by_a_wide_margin(tmp_path):
    splits = glyph_splits()
    cfg = small_config(tmp_path, steps=120, val_every=60, lr=2e-3, query=5)
    untrained = evaluate(cfg.model(), splits["test"], 5, 1, 5, episodes=100, seed=0, progress=False)
    train(cfg, splits=splits)
    model = load_model(cfg.run_dir / "best")
    acc = evaluate(model, splits["test"], 5, 1, 5, episodes=100, seed=0, progress=False)
    assert acc.mean > 60 and acc.mean > untrained.mean + 10, (untrained, acc)  # chance is 20%
    log = [json.loads(x) for x in (cfg.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "val_5w1s" in r] == [60, 120]
    assert log[-1]["loss"] < log[0]["loss"]


def test_training_on_an_omniglot_subset_beats_chance(real_omniglot_root, tmp_path):
    if real_omniglot_root is None:
        pytest.skip("the real Omniglot zips (../shared/data/omniglot) are not on this machine")
    splits = omniglot_splits(load_omniglot(real_omniglot_root), "vinyals")
    sub = splits["train"]
    splits["train"] = FewShotSplit(sub.images, sub.source[:400], sub.rotation[:400], sub.names[:400])
    cfg = small_config(tmp_path, steps=150, val_every=150, lr=2e-3)
    train(cfg, splits=splits)
    acc = evaluate(load_model(cfg.run_dir / "best"), splits["test"], 5, 1, 5, episodes=100, seed=0,
                   progress=False)
    assert acc.mean > 70, acc  # chance is 20%; the trained model reaches about 85% here


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path):
    splits = glyph_splits()
    straight = small_config(tmp_path / "a")
    train(straight, splits=splits)
    crashed = small_config(tmp_path / "b")
    train(crashed, splits=splits, stop_after=3)  # the resume point is written at step 3
    saved = (crashed.run_dir / "last.safetensors").read_bytes()
    train(crashed, splits=splits, stop_after=1)  # step 4 is logged ...
    (crashed.run_dir / "last.safetensors").write_bytes(saved)  # ... but the process dies before its checkpoint
    assert not (crashed.run_dir / "final").exists()
    train(crashed, splits=splits)  # resumes from step 3
    a = load_model(straight.run_dir / "final").state_dict()
    b = load_model(crashed.run_dir / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (crashed.run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 4 logged once, not twice


def test_stop_after_loses_at_most_one_checkpoint_interval(tmp_path):
    cfg = small_config(tmp_path, steps=10, checkpoint_every=3)
    train(cfg, splits=glyph_splits(), stop_after=5)
    from matchnet.checkpoint import load_state
    assert load_state(cfg.run_dir / "last.safetensors")[1]["step"] == 5  # saved on stopping too


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown option"):
        TrainConfig.from_dict({"wya": 5})
    with pytest.raises(ValueError, match="way should be int"):
        TrainConfig.from_dict({"way": "five"})
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig.from_dict({"schedule": "sometimes"})
    with pytest.raises(ValueError, match="val_tasks"):
        TrainConfig.from_dict({"val_tasks": [5, 1]})
    for path in [*(ROOT / "train" / "configs").glob("omniglot_*.toml"), ROOT / "train" / "configs" / "smoke.toml"]:
        assert TrainConfig.from_toml(path).name


def test_cli_help_and_a_missing_data_folder(tmp_path):
    run = [sys.executable, str(ROOT / "train" / "run.py")]
    out = subprocess.run(run + ["--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(c in out.stdout for c in ("train", "eval", "ablate-scale"))
    out = subprocess.run(run + ["train", "--help"], capture_output=True, text=True)
    assert "--device" in out.stdout and "--set" in out.stdout
    out = subprocess.run(run + ["eval", "--checkpoint", "assets/omniglot-vinyals", "--data-root",
                                str(tmp_path / "none"), "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "images_background" in out.stderr and "Traceback" not in out.stderr


def test_confidence_interval_matches_the_formula():
    values = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mean, ci = mean_ci95(values)
    assert mean == 0.75
    assert math.isclose(ci, 1.96 * values.std().item() / 2)


def test_a_perfect_predictor_scores_100_with_no_interval():
    split = glyph_splits()["test"]
    acc = evaluate(lambda ep: torch.nn.functional.one_hot(ep.query_labels, ep.n_way).float().log(), split,
                   5, 1, 3, episodes=20, seed=0, progress=False)
    assert acc.mean == 100 and acc.ci95 == 0 and acc.episodes == 20


def test_a_quick_eval_never_replaces_a_checkpoints_reported_results():
    sys.path.insert(0, str(ROOT))
    from train import run

    shipped = ROOT / "assets" / "omniglot-vinyals"
    assert run.default_results_path(shipped, 1000, 0) == shipped / "results.json"
    quick = run.default_results_path(shipped, 20, 3)
    assert quick.parent == ROOT / "runs" / "eval" and quick.name == "omniglot-vinyals_20ep_seed3.json"
    out = subprocess.run([sys.executable, str(ROOT / "train" / "run.py"), "eval", "--checkpoint", str(shipped),
                          "--episodes", "20", "--write-docs"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "at least 1000 episodes" in out.stderr and "Traceback" not in out.stderr
