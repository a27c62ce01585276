"""Old vs new, for `train/run.py rebuild`: the shipped assets/<name> and the freshly trained runs/<name>/best,
scored by the same code on the same episodes, and the rule that decides which one ships.

Validation: every val task of the config on its val classes, `episodes` episodes each, seed 12345 and the
config's val_protocol (as matchnet.train.validate draws them, with more episodes). Test: the four columns of
`train/run.py eval --seed 0` (evaluate_table). Both in fp32, the model in channels_last.
The rule: the new model ships when its first val task (the metric that selected it during training) is at
least the old one's; otherwise the old assets stay and the record says so.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from matchnet.checkpoint import WEIGHTS, load_model
from matchnet.evaluate import COLUMNS, TEST_QUERY, evaluate, evaluate_table, model_predictor
from matchnet.train import TrainConfig

VAL_SEED = 12345  # matchnet.train.validate's episodes


def shown(folder: Path) -> str:
    """A checkpoint as records name it: relative to the working folder, not a machine's absolute path."""
    try:
        return str(Path(folder).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(folder.parent.name) / folder.name)


def _pcts(n: float, o: float) -> tuple[str, str]:
    """n and o with enough decimals to tell them apart (a tie at 2 decimals printed '96.49 < 96.49')."""
    for digits in (2, 3, 4):
        if f"{n:.{digits}f}" != f"{o:.{digits}f}":
            break
    return f"{n:.{digits}f}", f"{o:.{digits}f}"


def _acc(a) -> dict:
    return {"mean": a.mean, "ci95": a.ci95}


def val_scores(model: torch.nn.Module, cfg: TrainConfig, val_split, episodes: int) -> dict[str, dict]:
    out = {}
    predict = model_predictor(model, False)
    for way, shot in cfg.val_tasks:
        if cfg.val_protocol == "within-alphabet":  # as Lake's test: one query per class (as validate does)
            from matchnet.alphabets import evaluate_within_alphabet, upright

            acc = evaluate_within_alphabet(predict, upright(val_split), way, shot, 1, episodes, seed=VAL_SEED,
                                           progress=False)
        else:
            acc = evaluate(predict, val_split, way, shot, cfg.val_query, episodes, seed=VAL_SEED, batch=10,
                           progress=False)
        out[f"val_{way}w{shot}s"] = _acc(acc)
    return out


def scores_on_test(model: torch.nn.Module, test_split, episodes: int) -> dict[str, dict]:
    columns = tuple(c for c in COLUMNS if c[0] <= test_split.num_classes)  # as train/run.py eval skips them
    accs = evaluate_table(model, test_split, episodes=episodes, seed=0, columns=columns, batch=10, progress=False)
    return {f"{a.way}w{a.shot}s": _acc(a) for a in accs}


def score(folder: Path, cfg: TrainConfig, splits: dict, dev: torch.device, episodes: int,
          test: dict | None = None) -> dict:
    """Val and test scores of one checkpoint; `test`: its test scores already measured on these episodes
    (the evaluated phase's results.json: the same evaluate_table call), not measured twice."""
    model = load_model(folder, dev)
    model.use_channels_last()  # NHWC: the same fp32 arithmetic, faster on a CPU
    model.eval()
    t = time.perf_counter()
    val_images, test_images = work_images(cfg, episodes, splits["test"].num_classes)
    with torch.no_grad():
        val = val_scores(model, cfg, splits["val"].to(dev), episodes)
        if test is None:
            test = scores_on_test(model, splits["test"].to(dev), episodes)
        else:
            test_images = 0
    images = val_images + test_images
    return {"checkpoint": shown(folder), "val": val, "test": test, "seconds": round(time.perf_counter() - t, 1),
            "images": images}


def work_images(cfg: TrainConfig, episodes: int, test_classes: int | None = None) -> tuple[int, int]:
    """(val images, test images) one model's scoring reads (the progress display's work units)."""
    val_query = 1 if cfg.val_protocol == "within-alphabet" else cfg.val_query
    val = episodes * sum(w * (s + val_query) for w, s in cfg.val_tasks)
    cols = [c for c in COLUMNS if test_classes is None or c[0] <= test_classes]
    return val, episodes * sum(w * (s + TEST_QUERY) for w, s in cols)


def compare(name: str, cfg: TrainConfig, new: Path, old: Path, splits: dict, dev: torch.device,
            episodes: int, new_test: dict | None = None, old_splits: dict | None = None) -> dict:
    """Both models scored, and the decision with its reason (runs/<name>/comparison.json's content).
    new_test: the new model's test scores from the evaluated phase (same episodes), if at hand. old_splits: the
    same splits at the old model's image side, when it differs (episodes pick by index: still the same ones)."""
    first = f"val_{cfg.val_tasks[0][0]}w{cfg.val_tasks[0][1]}s"
    record = {"model": name, "episodes": episodes, "val_seed": VAL_SEED, "test_seed": 0,
              "val_protocol": cfg.val_protocol, "val_query": cfg.val_query, "test_query": TEST_QUERY,
              "selection_metric": first, "precision": "fp32, channels_last",
              "new": score(new, cfg, splits, dev, episodes, new_test)}
    if not (old / WEIGHTS).is_file():
        record.update(old=None, shipped="new", reason=f"nothing was shipped at {shown(old)} before")
        return record
    try:
        record["old"] = score(old, cfg, old_splits or splits, dev, episodes)
    except Exception as e:  # an old checkpoint today's code cannot read cannot be the better one on record
        record.update(old={"checkpoint": shown(old), "error": str(e)}, shipped="new",
                      reason=f"the shipped checkpoint could not be scored: {e}")
        return record
    n, o = record["new"]["val"][first]["mean"], record["old"]["val"][first]["mean"]
    ns, os_ = _pcts(n, o)
    if n >= o:
        record.update(shipped="new", reason=f"new {first} {ns}% >= old {os_}%")
    else:
        record.update(shipped="old", reason=f"new {first} {ns}% < old {os_}%: the old model stays")
    return record
