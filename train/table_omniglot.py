"""Table 1 (Omniglot) and the MNIST transfer test: every row of the paper's table, on the Matching Network's
test episodes (same seeds, same episodes, same statistic as `train/run.py eval`).

    python train/run.py table omniglot [--device cuda] [--data-root DIR] [--episodes 1000] [--seed 0]

Trains what is missing (runs/<model>/, resumable; a shipped assets/baselines/<model>/ is used as is), chooses
the fine-tuning settings on validation, evaluates every row and writes docs/results/omniglot_table.md (+ .json,
.html, .png). Options that the command line does not carry are environment variables:

    TABLE_SET="classifier.steps=200 mann.steps=50 finetune.val_episodes=20"   override config options
    TABLE_ROWS="pixels,classifier"   measure only these rows; the others keep their last measured values
    TABLE_RETRAIN=1                  train into runs/ even where assets/baselines/<model> ships
    TABLE_RUNS=DIR                   where models train (default runs/)
    TABLE_OUT=DIR                    write the outputs there instead of docs/results/ (rehearsals)

The docs are only written with --episodes >= 1000 and no TABLE_OUT; otherwise the outputs go to
TABLE_OUT or runs/table-omniglot/. Models are only copied to assets/baselines/ in that docs mode.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from matchnet.config import part_sets
from matchnet.baselines import (ClassifierConfig, FinetuneConfig, MANNConfig, SiameseConfig, class_features,
                                config_from_toml, evaluate_features, evaluate_features_table, finetune_predictor,
                                load_encoder, load_mann, mann_predictor, nearest_neighbour, pixel_features,
                                select_on_validation, split_encoder, train_classifier, train_mann, train_siamese)
from matchnet.baselines.features import column_seed
from matchnet.baselines.finetune import head_lr, matching_net_match, nearest_neighbour_match
from matchnet.engine import finished
from matchnet.results import merge_rows
from matchnet.baselines.report import write_figure, write_markdown
from matchnet.baselines.siamese import load_siamese, verification_predictor
from matchnet.baselines.store import folder_size
from matchnet.checkpoint import load_model
from matchnet.data import DatasetNotFoundError, load_mnist, load_splits
from matchnet.evaluate import COLUMNS, TEST_QUERY
from matchnet.inference import preprocess_split
from matchnet.train import resolve_device

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "train" / "configs"
KEYS = tuple(f"{w}w{s}s" for w, s in COLUMNS)
MATCHNET = ROOT / "assets" / "omniglot-vinyals"
SHIP_LIMIT = 1_000_000  # bytes: larger checkpoints stay in runs/

# Table 1 of the paper, quoted (not measured here): (model, matching fn, fine-tuned, 5w1s, 5w5s, 20w1s, 20w5s)
PAPER = {
    "pixels": ("Pixels", "Cosine", "N", (41.7, 63.2, 26.7, 42.6)),
    # Not a row of the paper: the same with Omniglot's stored polarity (paper = 1, ink = 0), for comparison.
    "pixels-inverted": ("Pixels, paper = 1 and ink = 0", "Cosine", "N", (None, None, None, None)),
    "classifier": ("Baseline classifier", "Cosine", "N", (80.0, 95.0, 69.5, 89.1)),
    "classifier-ft": ("Baseline classifier", "Cosine", "Y", (82.3, 98.4, 70.6, 92.0)),
    "classifier-softmax-ft": ("Baseline classifier", "Softmax", "Y", (86.0, 97.6, 72.9, 92.3)),
    "mann": ("MANN (no conv)", "Cosine", "N", (82.8, 94.9, None, None)),
    "siamese": ("Convolutional siamese net", "Cosine", "N", (96.7, 98.4, 88.0, 96.5)),
    "siamese-ft": ("Convolutional siamese net", "Cosine", "Y", (97.3, 98.4, 88.1, 97.0)),
    # Not a row of the paper: Koch et al.'s own matching rule (the learned p(same) head), for comparison.
    "siamese-l1": ("Convolutional siamese net", "Koch's p(same)", "N", (None, None, None, None)),
    "matchnet": ("Matching Nets", "Cosine", "N", (98.1, 98.9, 93.8, 98.5)),
    "matchnet-ft": ("Matching Nets", "Cosine", "Y", (97.9, 98.7, 93.5, 98.7)),
}
# One-shot 10-way MNIST with Omniglot-trained models (section 4.1.1). The siamese figure is Koch et al.'s own,
# as the paper quotes it.
PAPER_MNIST = {"mnist-pixels": ("Pixels", None), "mnist-classifier": ("Baseline classifier", 63.0),
               "mnist-siamese": ("Convolutional siamese net", 70.0),
               "mnist-siamese-l1": ("Convolutional siamese net, Koch's p(same)", None),
               "mnist-matchnet": ("Matching Nets", 72.0),
               # Not rows of the paper: the same models on MNIST put through the demo's drawing preprocessing
               # (matchnet.inference: crop to the ink, Omniglot's size and position, Omniglot's stroke width).
               "mnist-app-pixels": ("Pixels, MNIST through the app's preprocessing", None),
               "mnist-app-classifier": ("Baseline classifier, MNIST through the app's preprocessing", None),
               "mnist-app-siamese": ("Convolutional siamese net, MNIST through the app's preprocessing", None),
               "mnist-app-matchnet": ("Matching Nets, MNIST through the app's preprocessing", None)}
APP = "mnist-app-"
MNIST_COLUMN = (10, 1)


def env_overrides() -> dict[str, dict[str, Any]]:
    """TABLE_SET="part.key=value ..." -> {"part": {"key": value}}; values are TOML."""
    return part_sets(os.environ.get("TABLE_SET", ""), {"classifier", "siamese", "mann", "finetune"})


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:  # Linux names the model here; platform.processor() is often empty
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"CPU ({name}, {threads} thread{'s' if threads > 1 else ''})"


class Table:
    """The state of one `table omniglot` run: data, device, configs, where things go, the rows measured."""

    def __init__(self, args) -> None:
        self.device = resolve_device(args.device)
        self.episodes, self.seed, self.data_root = args.episodes, args.seed, args.data_root
        sets = env_overrides()
        kinds = {"classifier": ClassifierConfig, "siamese": SiameseConfig, "mann": MANNConfig,
                 "finetune": FinetuneConfig}
        self.cfg = {m: config_from_toml(cls, CONFIGS / f"baseline_{m}.toml", **sets.get(m, {}))
                    for m, cls in kinds.items()}
        self.docs_mode = args.episodes >= 1000 and not os.environ.get("TABLE_OUT")
        self.out = (ROOT / "docs" / "results" if self.docs_mode
                    else Path(os.environ.get("TABLE_OUT") or "runs/table-omniglot"))
        self.runs = Path(os.environ.get("TABLE_RUNS", "runs"))
        self.retrain = bool(os.environ.get("TABLE_RETRAIN"))
        rows = os.environ.get("TABLE_ROWS", "")
        self.only = set(rows.replace(",", " ").split()) if rows else None
        env = " ".join(f"{k}={json.dumps(os.environ[k]) if ' ' in os.environ[k] else os.environ[k]}"
                       for k in ("TABLE_SET", "TABLE_ROWS", "TABLE_RETRAIN") if os.environ.get(k))
        self.command = ((env + " ") if env else "") + (
            f"python train/run.py table omniglot --device {self.device.type} --data-root {self.data_root} "
            f"--episodes {self.episodes} --seed {self.seed}")
        self.hardware = hardware(self.device)
        self.splits = load_splits("omniglot", "vinyals", self.data_root)
        self.test = self.splits["test"].to(self.device)
        self.val = self.splits["val"].to(self.device)
        self.tables: dict[str, torch.Tensor] = {}

    def wanted(self, row: str) -> bool:
        return self.only is None or row in self.only

    # -- models -----------------------------------------------------------------------------------------------

    def checkpoint(self, model: str, train: Callable, kind: str) -> Path:
        """The folder of a trained model: shipped, else finished in runs/, else trained now (resuming)."""
        name = self.cfg[model].name
        shipped = ROOT / "assets" / "baselines" / name
        if not self.retrain and (shipped / "config.json").is_file():
            return shipped
        run_dir = self.runs / name
        if not finished(run_dir):
            print(f"training {name} on {self.hardware} ({self.cfg[model].steps} steps) -> {run_dir}", flush=True)
            summary = train(self.cfg[model], self.splits, run_dir, self.device)
            record = {"model": name, "kind": kind, "hardware": self.hardware, "torch": torch.__version__,
                      "command": self.command, "train_seconds": summary["seconds"], "best_val": summary["best_val"],
                      "steps_done": summary["steps"], "stopped_at_time_limit": summary["stopped_at_time_limit"],
                      "selected": "best first validation metric in log.jsonl", "recipe": vars(self.cfg[model])}
            (run_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        best = run_dir / "best"
        if self.docs_mode and folder_size(best) < SHIP_LIMIT:  # small enough to ship with the checkout
            shipped.mkdir(parents=True, exist_ok=True)
            for f in ("config.json", "model.safetensors"):
                shutil.copyfile(best / f, shipped / f)
            for f in ("training.json", "log.jsonl"):
                if (run_dir / f).is_file():
                    shutil.copyfile(run_dir / f, shipped / ("training_log.jsonl" if f == "log.jsonl" else f))
            print(f"shipped {name} to {shipped}", flush=True)
            return shipped
        return best

    def encoder(self, model: str) -> tuple[torch.nn.Module, Path]:
        train = {"classifier": train_classifier, "siamese": train_siamese}[model]
        folder = self.checkpoint(model, train, model)
        return load_encoder(folder, self.device), folder

    def table(self, key: str, split, encode: Callable) -> torch.Tensor:
        """Features of every image of a split, computed once per (encoder, split) key."""
        if key not in self.tables:
            self.tables[key] = class_features(split, encode)
        return self.tables[key]

    # -- rows -------------------------------------------------------------------------------------------------

    def row(self, key: str, accs: list, started: float, checkpoint: str | None = None, **extra) -> dict:
        model, matching, tuned, _ = PAPER[key] if key in PAPER else (PAPER_MNIST[key][0], "Cosine", "N", None)
        result = {"row": key, "model": model, "matching": matching, "finetune": tuned,
                  "accuracy": {f"{a.way}w{a.shot}s": {"mean": a.mean, "ci95": a.ci95} for a in accs},
                  "episodes": self.episodes, "seed": self.seed, "query_per_class": TEST_QUERY,
                  "hardware": self.hardware, "torch": torch.__version__,
                  "seconds": round(time.perf_counter() - started, 1), "checkpoint": checkpoint,
                  "command": self.command, **extra}
        cells = ", ".join(f"{k} {v['mean']:.2f} ± {v['ci95']:.2f}" for k, v in result["accuracy"].items())
        print(f"[{result['seconds']:>6.1f} s] {key}: {cells}", flush=True)
        return result

    def columns(self, predict, table: torch.Tensor, columns=COLUMNS) -> list:
        return evaluate_features_table(predict, table, self.episodes, self.seed, TEST_QUERY, columns)

    def finetune_row(self, key: str, encoder: torch.nn.Module, folder: str, head: str, match) -> dict:
        """Choose (lr, steps) per column on val, then fine-tune on every test episode's support set."""
        t = time.perf_counter()
        ft = self.cfg["finetune"]
        frozen, tuned = split_encoder(encoder, ft.blocks)
        val_table = self.table(f"{folder}:{ft.blocks}:val", self.val, frozen)
        test_table = self.table(f"{folder}:{ft.blocks}:test", self.test, frozen)
        chosen = select_on_validation(tuned, val_table, head, ft, match)
        accs = []
        for i, ((way, shot), col) in enumerate(zip(COLUMNS, KEYS)):
            predict = finetune_predictor(tuned, head, chosen[col]["lr"], chosen[col]["steps"], match, ft.scale,
                                         head_lr(ft, head))
            accs.append(evaluate_features(predict, test_table, way, shot, TEST_QUERY, self.episodes,
                                          column_seed(self.seed, i), ft.batch))
        return self.row(key, accs, t, folder, finetune_config=vars(ft), head=head, chosen=chosen)

    def measure(self) -> list[dict]:
        rows = []
        if self.wanted("pixels"):
            t = time.perf_counter()
            pixels = self.table("pixels:test", self.test, pixel_features)
            rows.append(self.row("pixels", self.columns(nearest_neighbour, pixels), t))
        if self.wanted("pixels-inverted"):
            t = time.perf_counter()
            inverted = class_features(self.test, lambda images: pixel_features(1 - images))
            rows.append(self.row("pixels-inverted", self.columns(nearest_neighbour, inverted), t))
        mn = load_model(MATCHNET, self.device)
        for model in ("classifier", "siamese"):
            if not any(self.wanted(r) for r in (model, f"{model}-ft", f"{model}-softmax-ft")):
                continue
            encoder, folder = self.encoder(model)
            if self.wanted(model):
                t = time.perf_counter()
                feats = self.table(f"{folder}:test", self.test, encoder)
                rows.append(self.row(model, self.columns(nearest_neighbour, feats), t, str(folder)))
            if self.wanted(f"{model}-ft"):
                rows.append(self.finetune_row(f"{model}-ft", encoder, str(folder), "cosine", nearest_neighbour_match))
            if model == "siamese" and self.wanted("siamese-l1"):
                t = time.perf_counter()
                feats = self.table(f"{folder}:test", self.test, encoder)
                koch = verification_predictor(load_siamese(folder, self.device))
                rows.append(self.row("siamese-l1", self.columns(koch, feats), t, str(folder)))
            if model == "classifier" and self.wanted("classifier-softmax-ft"):
                rows.append(self.finetune_row("classifier-softmax-ft", encoder, str(folder), "softmax",
                                              nearest_neighbour_match))
        if self.wanted("mann"):
            folder = self.checkpoint("mann", train_mann, "mann")
            t = time.perf_counter()
            predict = mann_predictor(load_mann(folder, self.device), seed=self.seed)
            pixels = self.table("pixels:test", self.test, pixel_features)
            rows.append(self.row("mann", self.columns(predict, pixels, COLUMNS[:2]), t, str(folder)))
        match = matching_net_match(mn)
        if self.wanted("matchnet"):
            t = time.perf_counter()
            feats = self.table("matchnet:test", self.test, mn.encoder)
            predict = lambda ep: match(ep.support, ep.support_labels, ep.query, ep.n_way)  # noqa: E731
            rows.append(self.row("matchnet", self.columns(predict, feats), t, "assets/omniglot-vinyals"))
        if self.wanted("matchnet-ft"):
            rows.append(self.finetune_row("matchnet-ft", mn.encoder, "assets/omniglot-vinyals", "cosine", match))
        rows += self.measure_mnist(mn)
        return rows

    def measure_mnist(self, mn) -> list[dict]:
        keys = [k for k in PAPER_MNIST if self.wanted(k)]
        if not keys:
            return []
        try:
            mnist = load_mnist(self.data_root)
        except DatasetNotFoundError as e:
            print(f"MNIST rows skipped: {e}", flush=True)
            return []
        datasets = {"": mnist.to(self.device)}
        if any(k.startswith(APP) for k in keys):
            datasets[APP] = preprocess_split(mnist).to(self.device)
        bases = {k.replace(APP, "mnist-") for k in keys}
        match = matching_net_match(mn)
        predictors = {
            "mnist-pixels": (pixel_features, nearest_neighbour, None),
            "mnist-matchnet": (mn.encoder, lambda ep: match(ep.support, ep.support_labels, ep.query, ep.n_way),
                               "assets/omniglot-vinyals"),
        }
        for model in ("classifier", "siamese"):
            if f"mnist-{model}" in bases or f"mnist-{model}-l1" in bases:
                encoder, folder = self.encoder(model)
                predictors[f"mnist-{model}"] = (encoder, nearest_neighbour, str(folder))
        if "mnist-siamese-l1" in bases:
            encoder, folder = self.encoder("siamese")
            predictors["mnist-siamese-l1"] = (encoder, verification_predictor(load_siamese(folder, self.device)),
                                              str(folder))
        rows = []
        for key in keys:
            app = key.startswith(APP)
            encode, predict, folder = predictors[key.replace(APP, "mnist-")]
            t = time.perf_counter()
            feats = class_features(datasets[APP if app else ""], encode)
            way, shot = MNIST_COLUMN
            acc = evaluate_features(predict, feats, way, shot, TEST_QUERY, self.episodes, self.seed)
            dataset = "MNIST test set (10,000 images, first 892 per digit)"
            rows.append(self.row(key, [acc], t, folder,
                                 dataset=dataset + (", through matchnet.inference.preprocess_split" if app else "")))
        return rows


def main(args) -> None:
    table = Table(args)
    started = time.perf_counter()
    measured = table.measure()
    store = table.out / "omniglot_table.json"
    rows = merge_rows(store, measured, list(PAPER) + list(PAPER_MNIST))
    md = write_markdown(rows, table.out / "omniglot_table.md", PAPER, PAPER_MNIST, table.cfg["finetune"])
    write_figure(rows, table.out / "omniglot_table.html", PAPER, PAPER_MNIST)
    print(md.read_text())
    print(f"table omniglot: {time.perf_counter() - started:.0f} s; wrote {store}, {md} and the figure", flush=True)
