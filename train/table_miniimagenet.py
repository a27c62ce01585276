"""Table 2 (miniImageNet, section 4.1.2): every row of the paper's table on the same seeded test episodes as
`train/run.py eval` (5-way 1-shot and 5-shot, 15 queries per class, 95% intervals over --episodes episodes).

    python train/run.py table miniimagenet --device cuda [--data-root DIR] [--episodes 1000] [--seed 0]

miniImageNet must be under DIR (Ravi & Larochelle's images/ + CSVs, or {train,val,test}/<wnid>/ folders; see
matchnet/data/miniimagenet.py). Trains what is missing into runs/ (resumable): the baseline classifier, and each
Matching Network (1-shot and 5-shot, +/- FCE) once per candidate softmax scale, keeping the scale with the best
validation accuracy; fine-tuning settings are chosen on validation too. Writes docs/results/miniimagenet_table.md
(+ .json). Options the command line does not carry are environment variables:

    TABLE_SET="classifier.steps=200 matchnet.steps=500 finetune.val_episodes=20 data.image_size=32"
                                     override config options (matchnet.* applies to all four Matching Networks)
    TABLE_SCALES="10,30"             the softmax scales tried on validation (default 10,30)
    TABLE_ROWS="pixels,matchnet"     measure only these rows; the others keep their last measured values
    TABLE_RUNS=DIR                   where models train (default runs/)
    TABLE_OUT=DIR                    write the outputs there instead of docs/results/ (rehearsals)

The docs are only written with --episodes >= 1000 and no TABLE_OUT.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from matchnet.atomic import write_text
from matchnet.baselines import (ClassifierConfig, FinetuneConfig, class_features, config_from_toml,
                                evaluate_features, finetune_predictor, load_encoder, nearest_neighbour,
                                pixel_features, select_on_validation, split_encoder, train_classifier)
from matchnet.baselines.features import column_seed
from matchnet.baselines.finetune import head_lr, matching_net_match, nearest_neighbour_match
from matchnet.checkpoint import load_model
from matchnet.config import part_sets
from matchnet.data import load_splits
from matchnet.engine import finished
from matchnet.evaluate import TEST_QUERY
from matchnet.results import merge_rows
from matchnet.train import TrainConfig, resolve_device, train
from table_omniglot import hardware

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "train" / "configs"
COLUMNS = ((5, 1), (5, 5))
KEYS = tuple(f"{w}w{s}s" for w, s in COLUMNS)
SCALES = (10.0, 30.0)
NOT_MEASURED = "not measured here: no images on the project's machines"

# Table 2 of the paper, quoted (not measured here): (model, matching fn, fine-tuned, 5w1s, 5w5s)
PAPER = {
    "pixels": ("Pixels", "Cosine", "N", (23.0, 26.6)),
    "classifier": ("Baseline classifier", "Cosine", "N", (36.6, 46.0)),
    "classifier-ft": ("Baseline classifier", "Cosine", "Y", (36.2, 52.2)),
    "classifier-softmax-ft": ("Baseline classifier", "Softmax", "Y", (38.4, 51.2)),
    "matchnet": ("Matching Nets", "Cosine", "N", (41.2, 56.2)),
    "matchnet-ft": ("Matching Nets", "Cosine", "Y", (42.4, 58.0)),
    "matchnet-fce": ("Matching Nets", "Cosine (FCE)", "N", (44.2, 57.0)),
    "matchnet-fce-ft": ("Matching Nets", "Cosine (FCE)", "Y", (46.6, 60.0)),
}
MATCHNET_CONFIGS = {(False, 1): "miniimagenet_1shot.toml", (False, 5): "miniimagenet_5shot.toml",
                    (True, 1): "miniimagenet_1shot_fce.toml", (True, 5): "miniimagenet_5shot_fce.toml"}


def overrides() -> dict[str, dict[str, Any]]:
    """TABLE_SET="part.key=value ..." -> {"part": {"key": value}}; values are TOML."""
    return part_sets(os.environ.get("TABLE_SET", ""), {"classifier", "finetune", "matchnet", "data"})


class Normalize(nn.Module):
    """(x - mean) / std per channel: the training classes' statistics, as the models were trained with."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Table:
    def __init__(self, args) -> None:
        self.device = resolve_device(args.device)
        self.episodes, self.seed, self.data_root = args.episodes, args.seed, args.data_root
        self.sets = overrides()
        self.data_options = {"image_size": 84, **self.sets.get("data", {})}
        self.classifier_cfg = config_from_toml(ClassifierConfig, CONFIGS / "miniimagenet_classifier.toml",
                                               **self.sets.get("classifier", {}))
        self.finetune_cfg = config_from_toml(FinetuneConfig, CONFIGS / "miniimagenet_finetune.toml",
                                             **self.sets.get("finetune", {}))
        scales = os.environ.get("TABLE_SCALES", "")
        self.scales = tuple(float(s) for s in scales.replace(",", " ").split()) if scales else SCALES
        self.docs_mode = args.episodes >= 1000 and not os.environ.get("TABLE_OUT")
        self.out = (ROOT / "docs" / "results" if self.docs_mode
                    else Path(os.environ.get("TABLE_OUT") or "runs/table-miniimagenet"))
        self.runs = Path(os.environ.get("TABLE_RUNS", "runs"))
        rows = os.environ.get("TABLE_ROWS", "")
        self.only = set(rows.replace(",", " ").split()) if rows else None
        if self.only and self.only - set(PAPER):
            raise ValueError(f"TABLE_ROWS names unknown rows {sorted(self.only - set(PAPER))}; rows: {list(PAPER)}")
        env = " ".join(f"{k}={json.dumps(os.environ[k]) if ' ' in os.environ[k] else os.environ[k]}"
                       for k in ("TABLE_SET", "TABLE_SCALES", "TABLE_ROWS") if os.environ.get(k))
        self.command = ((env + " ") if env else "") + (
            f"python train/run.py table miniimagenet --device {self.device.type} --data-root {self.data_root} "
            f"--episodes {self.episodes} --seed {self.seed}")
        self.hardware = hardware(self.device)
        self.splits = load_splits("miniimagenet", "ravi", self.data_root, **self.data_options)
        train_split = self.splits["train"]
        self.normalize = Normalize(train_split.mean, train_split.std).to(self.device)
        # FewShotSplit.to copies the dataset tensor (1.27 GB) to the device once: these two, and the train split
        # the trainers move later, share that one copy
        self.test = self.splits["test"].to(self.device)
        self.val = self.splits["val"].to(self.device)
        self.tables: dict[str, torch.Tensor] = {}

    def wanted(self, row: str) -> bool:
        return self.only is None or row in self.only

    def table(self, key: str, split, encode: Callable) -> torch.Tensor:
        """Features of every image of a split, computed once per (encoder, split) key."""
        if key not in self.tables:
            self.tables[key] = class_features(split, encode)
        return self.tables[key]

    # -- models ---------------------------------------------------------------------------------------------

    def classifier(self) -> tuple[nn.Module, Path]:
        """The baseline classifier's Conv-4 (trained now if runs/ has no finished one) and its folder."""
        cfg = self.classifier_cfg
        run_dir = self.runs / cfg.name
        if not finished(run_dir):
            print(f"training {cfg.name} on {self.hardware} ({cfg.steps} steps) -> {run_dir}", flush=True)
            summary = train_classifier(cfg, self.splits, run_dir, self.device)
            write_text(run_dir / "training.json", json.dumps(
                {"model": cfg.name, "hardware": self.hardware, "torch": torch.__version__, "command": self.command,
                 "train_seconds": summary["seconds"], "best_val": summary["best_val"], "steps_done": summary["steps"],
                 "data_options": self.data_options, "recipe": vars(cfg)}, indent=2) + "\n")
        return load_encoder(run_dir / "best", self.device), run_dir / "best"

    def matchnet(self, fce: bool, shot: int) -> tuple[torch.nn.Module, dict]:
        """The Matching Network for (FCE?, shot): one run per candidate scale, the best on validation kept."""
        base = TrainConfig.from_toml(CONFIGS / MATCHNET_CONFIGS[(fce, shot)])
        tried = {}
        for scale in self.scales:
            name = f"{base.name}-scale{scale:g}"
            values = {**vars(base), "name": name, "scale": scale, "data_root": self.data_root,
                      "device": self.device.type, "out_dir": str(self.runs / name),
                      "data_options": {**base.data_options, **self.data_options}, **self.sets.get("matchnet", {})}
            cfg = TrainConfig.from_dict(values, source=f"{MATCHNET_CONFIGS[(fce, shot)]} + TABLE_SET")
            started = time.perf_counter()
            summary = train(cfg, splits=self.splits)
            metric = f"val_{cfg.val_tasks[0][0]}w{cfg.val_tasks[0][1]}s"
            log = [json.loads(ln) for ln in (cfg.run_dir / "log.jsonl").read_text().splitlines() if ln.strip()]
            best = max((r[metric] for r in log if metric in r), default=float("-inf"))
            tried[f"{scale:g}"] = {"best_val": round(best, 2), "folder": str(cfg.run_dir / "best"),
                                   "steps": cfg.steps, "seconds_this_call": round(time.perf_counter() - started, 1),
                                   "summary_seconds": summary.get("seconds")}
        chosen = max(tried, key=lambda s: tried[s]["best_val"])
        info = {"scale": float(chosen), "val_metric": metric, "tried": tried, "hardware": self.hardware}
        print(f"{base.name}: scale {chosen} chosen on validation ({metric}: "
              + ", ".join(f"{s} -> {t['best_val']}" for s, t in tried.items()) + ")", flush=True)
        return load_model(tried[chosen]["folder"], self.device), info

    # -- rows -----------------------------------------------------------------------------------------------

    def row(self, key: str, accs: list, started: float, **extra) -> dict:
        model, matching, tuned, _ = PAPER[key]
        result = {"row": key, "model": model, "matching": matching, "finetune": tuned,
                  "accuracy": {f"{a.way}w{a.shot}s": {"mean": a.mean, "ci95": a.ci95} for a in accs},
                  "episodes": self.episodes, "seed": self.seed, "query_per_class": TEST_QUERY,
                  "hardware": self.hardware, "torch": torch.__version__, "data_options": self.data_options,
                  "seconds": round(time.perf_counter() - started, 1), "command": self.command, **extra}
        cells = ", ".join(f"{k} {v['mean']:.2f} ± {v['ci95']:.2f}" for k, v in result["accuracy"].items())
        print(f"[{result['seconds']:>6.1f} s] {key}: {cells}", flush=True)
        return result

    def column(self, i: int, predict, table: torch.Tensor, batch: int = 50):
        way, shot = COLUMNS[i]
        return evaluate_features(predict, table, way, shot, TEST_QUERY, self.episodes, column_seed(self.seed, i),
                                 batch)

    def finetuned(self, i: int, key: str, encoder: nn.Module, head: str, match) -> tuple[Any, dict]:
        """Column i fine-tuned: (lr, steps) chosen on val episodes of that column, then every test episode."""
        ft = self.finetune_cfg
        frozen, tuned = split_encoder(encoder, ft.blocks)
        frozen = nn.Sequential(self.normalize, frozen).eval()
        val_table = self.table(f"{key}:{ft.blocks}:val", self.val, frozen)
        test_table = self.table(f"{key}:{ft.blocks}:test", self.test, frozen)
        chosen = select_on_validation(tuned, val_table, head, ft, match, columns=[COLUMNS[i]])
        choice = chosen[KEYS[i]]
        predict = finetune_predictor(tuned, head, choice["lr"], choice["steps"], match, ft.scale, head_lr(ft, head))
        return self.column(i, predict, test_table, ft.batch), choice

    def measure(self) -> list[dict]:
        rows = []
        if self.wanted("pixels"):
            t = time.perf_counter()
            pixels = self.table("pixels:test", self.test, pixel_features)
            rows.append(self.row("pixels", [self.column(i, nearest_neighbour, pixels) for i in range(2)], t))
            del self.tables["pixels:test"]  # 12,000 x 21,168 floats: free it for the networks
        if any(self.wanted(r) for r in ("classifier", "classifier-ft", "classifier-softmax-ft")):
            encoder, folder = self.classifier()
            normalized = nn.Sequential(self.normalize, encoder).eval()
            if self.wanted("classifier"):
                t = time.perf_counter()
                feats = self.table("classifier:test", self.test, normalized)
                rows.append(self.row("classifier", [self.column(i, nearest_neighbour, feats) for i in range(2)], t,
                                     checkpoint=str(folder)))
            for key, head in (("classifier-ft", "cosine"), ("classifier-softmax-ft", "softmax")):
                if self.wanted(key):
                    t = time.perf_counter()
                    out = [self.finetuned(i, "classifier", encoder, head, nearest_neighbour_match) for i in range(2)]
                    rows.append(self.row(key, [a for a, _ in out], t, checkpoint=str(folder), head=head,
                                         finetune_config=vars(self.finetune_cfg),
                                         chosen={KEYS[i]: c for i, (_, c) in enumerate(out)}))
        for fce in (False, True):
            key = "matchnet-fce" if fce else "matchnet"
            if not (self.wanted(key) or self.wanted(f"{key}-ft")):
                continue
            models = {shot: self.matchnet(fce, shot) for shot in (1, 5)}  # each column its own shot's model
            scales = {KEYS[i]: models[s][1] for i, (_, s) in enumerate(COLUMNS)}
            if self.wanted(key):
                t, accs = time.perf_counter(), []
                for i, (_, shot) in enumerate(COLUMNS):
                    mn = models[shot][0]
                    match = matching_net_match(mn)
                    feats = class_features(self.test, lambda x, mn=mn: mn.encoder(mn.normalize(x)))
                    accs.append(self.column(i, lambda ep, m=match: m(ep.support, ep.support_labels, ep.query,
                                                                     ep.n_way), feats))
                rows.append(self.row(key, accs, t, models=scales))
            if self.wanted(f"{key}-ft"):
                t, out = time.perf_counter(), []
                for i, (_, shot) in enumerate(COLUMNS):
                    mn = models[shot][0]
                    out.append(self.finetuned(i, f"{key}-{shot}shot", mn.encoder, "cosine", matching_net_match(mn)))
                rows.append(self.row(f"{key}-ft", [a for a, _ in out], t, models=scales,
                                     finetune_config=vars(self.finetune_cfg),
                                     chosen={KEYS[i]: c for i, (_, c) in enumerate(out)}))
        return rows


def _cell(acc: dict | None, paper: float) -> str:
    ours = f"{acc['mean']:.2f} ± {acc['ci95']:.2f}" if acc else "not measured"
    return f"{ours} *({paper})*"


def best_val(model_info: dict) -> float:
    return model_info["tried"][f"{model_info['scale']:g}"]["best_val"]


def write_markdown(rows: list[dict], path: Path) -> Path:
    """docs/results/miniimagenet_table.md from the measured rows; with none, it says that nothing was measured."""
    by_key = {r["row"]: r for r in rows}
    lines = ["## miniImageNet (Table 2)", "",
             "Generated by `python train/run.py table miniimagenet` (train/table_miniimagenet.py); do not edit by "
             "hand. 5-way accuracy in % ± the half-width of the 95% interval over test episodes; the paper's "
             "numbers in *(italics)*, quoted, not measured here. Split: Ravi & Larochelle's 64 / 16 / 20 classes x "
             "600 images (the paper's own 80 / 20 split, its appendix B, was never published as a file list). "
             "Matching Networks: a 5-way 1-shot model for the 1-shot column and a 5-way 5-shot model for the "
             "5-shot column, each with the softmax scale chosen on validation; fine-tuning settings are chosen on "
             "validation; test episodes are never used to choose.", ""]
    if not rows:
        lines += [f"**{NOT_MEASURED[0].upper() + NOT_MEASURED[1:]}.** miniImageNet's images are not on the "
                  "machines this project was built on (only Ravi's split CSVs are); no row below was measured. "
                  "With the images in `data/miniimagenet/` (layouts: `matchnet/data/miniimagenet.py`), on a GPU:", "",
                  "```bash", "python train/run.py table miniimagenet --device cuda --data-root data --episodes 1000",
                  "```", ""]
    lines += ["| Model | Matching Fn | Fine Tune | 5-way 1-shot | 5-way 5-shot |", "|---|---|---|---:|---:|"]
    for key, (model, matching, tuned, paper) in PAPER.items():
        acc = by_key.get(key, {}).get("accuracy", {})
        lines.append(f"| {model} | {matching} | {tuned} | " + " | ".join(_cell(acc.get(k), p)
                                                                          for k, p in zip(KEYS, paper)) + " |")
    if rows:
        lines += ["", "Provenance (raw rows: `miniimagenet_table.json` beside this file):", ""]
        for r in rows:
            extra = ""
            if r.get("models"):
                extra = "; scales " + ", ".join(f"{k}: {v['scale']:g} (val {best_val(v)})"
                                                 for k, v in r["models"].items())
            if r.get("chosen"):
                extra += "; fine-tuning " + ", ".join(f"{k}: lr {c['lr']:g}, {c['steps']} steps"
                                                      for k, c in r["chosen"].items())
            lines.append(f"- `{r['row']}`: `{r['command']}` on {r['hardware']}, {r['episodes']} episodes per column, "
                         f"seed {r['seed']}, {r['seconds']:.0f} s{extra}")
    write_text(path, "\n".join(lines) + "\n")
    return path


def main(args) -> None:
    table = Table(args)
    started = time.perf_counter()
    measured = table.measure()
    store = table.out / "miniimagenet_table.json"
    rows = merge_rows(store, measured, list(PAPER))
    md = write_markdown(rows, table.out / "miniimagenet_table.md")
    print(md.read_text())
    print(f"table miniimagenet: {time.perf_counter() - started:.0f} s; wrote {store} and {md}", flush=True)
