"""What a long command costs on a CPU: estimates derived from the committed CPU measurements in docs/bench/,
with the arithmetic spelled out, so that a plan line can say where its number comes from. No torch import.

Two records: docs/bench/train_speed_cpu.json (training images per second on the 2-core CPU, per number of
episodes per step) and docs/bench/eval_cpu_omniglot-vinyals.json (one model's four test columns of 1,000
episodes: test images per second). Both were measured on a quiet machine; under load (other jobs on the same
cores) docs/bench/speed_cpu_decomposition.json measured 188 training images/s on 1 thread, 5 to 10 times less.
FCE's LSTMs are not in either rate: an FCE estimate is a lower bound (FCE is not measured on a CPU).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "docs" / "bench"
TRAIN_RECORD = BENCH / "train_speed_cpu.json"
# bench/cpu_speed.py's record (the CPU fast path as the CLI trains): preferred where it exists
FAST_RECORD = BENCH / "cpu_speed.json"
EVAL_RECORD = BENCH / "eval_cpu_omniglot-vinyals.json"
TEST_COLUMNS = ((5, 1), (5, 5), (20, 1), (20, 5))  # the paper's four Omniglot columns (matchnet.evaluate)
# Other records can stand in for these two (use_records, or these environment variables): a newer measurement
# on another CPU, in the same format, or one with a top-level "images_per_s" (and, for training, the
# "episodes_per_step" it was measured at).
RECORD_ENV = {"train": "MATCHNET_CPU_TRAIN_RECORD", "eval": "MATCHNET_CPU_EVAL_RECORD"}
_override: dict[str, Path] = {}
UNDER_LOAD = "under load (other jobs on the cores) 5-10x slower: docs/bench/speed_cpu_decomposition.json"


@dataclass
class Cost:
    seconds: float
    how: str  # the arithmetic and the records it comes from

    def line(self) -> str:
        return f"~{duration(self.seconds)} on a quiet 2-core CPU (estimate: {self.how})"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def use_records(train: str | Path | None = None, eval: str | Path | None = None) -> None:
    """Estimate from these records instead of docs/bench/'s (None: keep the current one)."""
    for kind, path in (("train", train), ("eval", eval)):
        if path is not None:
            if _read(Path(path)) is None:
                raise ValueError(f"{path}: not a readable JSON rate record")
            _override[kind] = Path(path)


def record_path(kind: str) -> Path:
    """The record in use for "train" or "eval": use_records', else the environment's, else docs/bench/'s."""
    import os

    env = os.environ.get(RECORD_ENV[kind])
    return _override.get(kind) or (Path(env) if env else (TRAIN_RECORD if kind == "train" else EVAL_RECORD))


def fast_rate(fce: bool) -> tuple[float, int, str] | None:
    """(images/s, episodes/step, row) of bench/cpu_speed.py's CPU recipe row (FCE or not), as the CLI trains."""
    record = _read(FAST_RECORD) if record_path("train") == TRAIN_RECORD else None
    row = next((r for r in (record or {}).get("rows", []) if r.get("name") == ("recipe+fce" if fce else "recipe")),
               None)
    if row is None or record.get("quick"):
        return None
    return float(row["images_per_s"]), int(row["settings"]["episodes"]), row["name"]


def train_rate(episodes_per_step: int, fce: bool = False) -> tuple[float, int] | None:
    """(training images/s, the measured episodes/step it was measured at): the CPU recipe's row of
    cpu_speed.json, else the measured row closest to episodes_per_step from below (more episodes per step were
    slower per image on the CPU before the malloc settings)."""
    fast = fast_rate(fce)
    if fast is not None:
        return fast[0], fast[1]
    record = _read(record_path("train"))
    if record is None:
        return None
    if record.get("images_per_s"):  # one measured rate, at the episodes per step it names (default 1)
        return float(record["images_per_s"]), int(record.get("episodes_per_step", 1))
    rows = []
    for row in record.get("rows", []):
        m = re.search(r"(\d+) episodes?/step", row.get("pipeline", ""))
        if row.get("pipeline", "").startswith("fast") and m:
            rows.append((int(m.group(1)), float(row["images_per_s"])))
    if not rows:
        return None
    below = [r for r in rows if r[0] <= episodes_per_step] or [min(rows)]
    episodes, rate = max(below)
    return rate, episodes


def eval_rate() -> float | None:
    """Test images per second of `train/run.py eval` (1,000 episodes of each of the four columns)."""
    record = _read(record_path("eval"))
    if record is not None and record.get("images_per_s"):
        return float(record["images_per_s"])
    if record is None or not record.get("eval_seconds"):
        return None
    return test_images(record["episodes"], int(record.get("query_per_class", 15))) / float(record["eval_seconds"])


def test_images(episodes: int, query: int = 15) -> int:
    """Images the four test columns read: episodes of each, `query` queries per class."""
    return episodes * sum(w * (s + query) for w, s in TEST_COLUMNS)


def eval_cost(episodes: int, columns=TEST_COLUMNS, query: int = 15) -> Cost | None:
    rate = eval_rate()
    if rate is None:
        return None
    images = episodes * sum(w * (s + query) for w, s in columns)
    return Cost(images / rate, f"{episodes:,} episodes x {images // episodes:,} images of the four columns / "
                               f"{rate:,.0f} test images/s measured in {record_path('eval').name}")


def train_cost(cfg, steps: int | None = None, validations: int | None = None) -> Cost | None:
    """Training plus validation of one config (a TrainConfig or anything with its fields) on the CPU."""
    steps = cfg.steps if steps is None else steps
    per_step = cfg.meta_batch * cfg.way * (cfg.shot + cfg.query)
    fce = bool(getattr(cfg, "fce", False))
    measured = train_rate(cfg.meta_batch, fce)
    source = FAST_RECORD.name + (", row recipe+fce" if fce else ", row recipe") if fast_rate(fce) else \
        record_path("train").name
    test = eval_rate()
    if measured is None or test is None:
        return None
    rate, at = measured
    checks = max(1, steps // cfg.val_every) if validations is None else validations
    val_query = 1 if getattr(cfg, "val_protocol", "standard") == "within-alphabet" else cfg.val_query  # Lake's
    val_images = checks * cfg.val_episodes * sum(w * (s + val_query) for w, s in cfg.val_tasks)
    seconds = steps * per_step / rate + val_images / test
    how = (f"{steps:,} steps x {per_step:,} images / {rate:,.0f} images/s ({source}, {at} "
           f"episode(s)/step) + {val_images:,} validation images / {test:,.0f} images/s ({record_path('eval').name})")
    if fce and not fast_rate(fce):
        how += "; FCE's LSTMs not included (not measured on a CPU): a lower bound"
    side = (getattr(cfg, "data_options", None) or {}).get("image_size", 28)
    if getattr(cfg, "dataset", "omniglot") != "omniglot":
        how += f"; measured at 28x28, so far too low for {cfg.dataset} images"
    elif side != 28:  # the omniglot-lake-within rebuild at 56 px took 23 min against an estimate of 7
        how += f"; measured at 28x28, so too low for {side}x{side} images"
    return Cost(seconds, how)


# What decides a model's cost per image: the same values at both sides make a shipped model's own measured times
# the best estimate of its rebuild (a 56-px FCE model evaluates ~10x slower per image than the 28-px record).
COST_KEYS = ("fce", "hidden", "way", "shot", "query", "meta_batch", "amp", "channels_last")


def _side(options: dict | None) -> int:
    return int((options or {}).get("image_size", 28))


def own_rates(cfg, assets: Path) -> dict[str, tuple[float, str]]:
    """Measured rates of this config's own shipped model on a CPU, where assets/<name>/ has them and its model
    costs what cfg's does: {"train": (images/s, how), "eval": (test images/s, how)}. Training's rate is all-in
    (its train_seconds count validation and start-up, so it stands for both). Only for images of another side
    than 28 px, which the CPU records (quiet-machine benchmarks) do not measure; at 28 px they are the better
    estimate, as a shipped model's times may have been taken beside other work."""
    rates: dict[str, tuple[float, str]] = {}
    if _side(getattr(cfg, "data_options", None)) == 28:
        return rates
    training = _read(assets / "training.json") or {}
    trained = training.get("train_config") or {}
    if (str(training.get("hardware", "")).startswith("CPU") and training.get("train_seconds")
            and training.get("train_images") and _side(trained.get("data_options")) == _side(cfg.data_options)
            and all(trained.get(k) == getattr(cfg, k, None) for k in COST_KEYS)):
        rate = float(training["train_images"]) / float(training["train_seconds"])
        rates["train"] = (rate, f"{rate:,.0f} images/s all-in, measured training the shipped model of this config "
                                f"({training['train_images']:,} images in {training['train_seconds']:,.0f} s, "
                                f"{assets.name}/training.json)")
    result = _read(assets / "results.json") or {}
    model = result.get("model") or {}
    if (str(result.get("hardware", "")).startswith("CPU") and result.get("eval_seconds") and result.get("episodes")
            and model.get("image_size") == _side(cfg.data_options) and model.get("fce") == cfg.fce
            and model.get("hidden", cfg.hidden) == cfg.hidden):
        rate = test_images(result["episodes"], int(result.get("query_per_class", 15))) / float(result["eval_seconds"])
        rates["eval"] = (rate, f"{rate:,.0f} test images/s, measured evaluating the shipped model of this config "
                               f"({result['eval_seconds']:,.0f} s for its four columns, {assets.name}/results.json)")
    return rates


def table_cost(task: str) -> str:
    """What `train/run.py table TASK` cost on this project's CPU, summed from its committed records."""
    if task == "omniglot":
        rows = (_read(BENCH.parent / "results" / "omniglot_table.json") or {}).get("rows", [])
        if not rows:
            return "not measured on a CPU"
        test = sum(float(r.get("seconds") or 0) for r in rows)
        trained = [(r["row"], r["trained"]["seconds"]) for r in rows if (r.get("trained") or {}).get("seconds")]
        return (f"evaluating its {len(rows)} rows at 1,000 episodes took {test:,.0f} s (~{duration(test)}) on 1-2 CPU "
                "threads, with the shipped baselines (the sum of the rows' `seconds` in docs/results/omniglot_table.json)"
                + "".join(f"; training {name} (not shipped, so a fresh clone trains it) took {s:,.0f} s (~{duration(s)})"
                          for name, s in trained)
                + "; retraining the shipped baselines (TABLE_RETRAIN=1) is not measured on a CPU")
    if task == "ptb":
        records = sorted(BENCH.glob("ptb/*.json"))
        total, count = 0.0, 0
        for path in records:
            r = _read(path) or {}
            spent = float((r.get("training") or {}).get("seconds") or r.get("train_seconds") or 0)
            spent += float((r.get("test") or {}).get("eval_seconds") or 0)
            total, count = total + spent, count + (spent > 0)
        if not count:
            return "not measured on a CPU"
        return (f"training and testing its {count} measured rows took {total:,.0f} s (~{duration(total)}) on 1 CPU "
                "thread (the sum of training `seconds` and test `eval_seconds` in docs/bench/ptb/*.json)")
    if task == "imagenet":
        return ("not measured (no ImageNet on the project's machines); estimated at tens of CPU core-years, "
                "hours to a day per split on one GPU: docs/IMAGENET.md, from docs/bench/imagenet_cost_cpu.json")
    return "not measured on a CPU (no miniImageNet images on the project's machines)"
