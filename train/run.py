#!/usr/bin/env python
"""matchnet's command line: train, evaluate, and record results.

  python train/run.py train --config train/configs/omniglot_vinyals.toml [--device cuda] [--set key=value ...]
  torchrun --nproc_per_node=N train/run.py train --config ...   (data-parallel over N GPUs or CPU processes)
  python train/run.py eval --checkpoint assets/omniglot-vinyals [--episodes 1000] [--write-docs]
  python train/run.py eval --checkpoint assets/omniglot-lake --protocol lake-runs [--set download=true]
  python train/run.py ablate-scale --config train/configs/omniglot_vinyals.toml --steps 600
  python train/run.py publish --checkpoint assets/omniglot-vinyals --repo-id USER/NAME [--dry-run OUTDIR]
  python train/run.py rebuild --device cuda [--push-to USER/PREFIX] [--data-root DIR]
  python train/run.py table {omniglot,ptb,miniimagenet} [--device cuda]   (one process: see cmd_table)
  python train/run.py table imagenet --split rand|dogs --data-root ILSVRC2012 [--device cuda]  (torchrun too)

Every option of a config file can be overridden with --set key=value (values are TOML: --set fce=true).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "train"))  # the table_<task>.py modules

# torch and the library are imported inside each command, so that --help answers at once.


def load_config(args):
    from matchnet.config import parse_sets
    from matchnet.train import TrainConfig

    overrides = parse_sets(args.set, TrainConfig)
    if args.device:
        overrides["device"] = args.device
    if args.data_root:
        overrides["data_root"] = args.data_root
    return TrainConfig.from_toml(args.config, **overrides)


def hardware(device) -> str:
    from matchnet.engine import hardware as describe

    return describe(device)


def cmd_train(args) -> None:
    """Train from a config; under torchrun every process runs this, rank 0 alone reports."""
    from matchnet.distributed import close_distributed, init_distributed
    from matchnet.train import train

    cfg = load_config(args)
    dist = init_distributed(cfg.device)
    try:
        summary = train(cfg, resume=not args.restart)
    finally:
        close_distributed()
    if not dist.is_main:
        return
    if summary["interrupted"]:
        print(f"interrupted at step {summary['steps']}: the resume point is {cfg.run_dir / 'last.safetensors'}; "
              "run the same command again to continue", file=sys.stderr)
        sys.exit(128 + summary["signal"])
    print(json.dumps(summary, indent=2))
    if args.eval:
        evaluate_checkpoint(Path(cfg.run_dir) / "best", cfg.dataset, cfg.split, cfg.data_root, cfg.device,
                            args.episodes, args.seed, Path(cfg.run_dir) / "results.json", train_cfg=cfg,
                            data_options=cfg.data_options)


def training_meta(folder: Path) -> dict:
    """How a checkpoint was trained: its training.json (shipped and rebuilt models) or, for a run's best/ or
    final/, the run's train_config.json. Empty when neither exists."""
    from matchnet.checkpoint import read_json

    meta = read_json(folder / "training.json") or {}  # CheckpointError naming the file if it is not an object
    config = meta.get("train_config") or read_json(folder.parent / "train_config.json") or {}
    return {"dataset": meta.get("dataset", config.get("dataset")), "split": meta.get("split", config.get("split")),
            "data_options": config.get("data_options") or {}}


def evaluate_checkpoint(folder: Path, dataset: str, split: str, data_root: str, device: str, episodes: int,
                        seed: int, out: Path | None, train_cfg=None, data_options: dict | None = None) -> dict:
    from matchnet.checkpoint import load_model
    from matchnet.data import load_splits
    from matchnet.distributed import resolve_device
    from matchnet.evaluate import COLUMNS, TEST_QUERY, evaluate_table

    if out is not None:
        check_writable(out)  # before minutes of evaluation, not after
    dev = resolve_device(device)
    model = load_model(folder, dev)
    if hasattr(model, "use_channels_last"):  # NHWC: the same fp32 arithmetic, ~2-5x the images/s on a CPU
        model.use_channels_last()
    options = dict(data_options or {})
    options["image_size"] = model.config["image_size"]  # decode at the side the model was trained at (28, 56, 84)
    splits = load_splits(dataset, split, data_root, **options)
    test = splits["test"]
    # Omniglot: the paper's Table 1 columns; natural images: its Table 2 columns (5-way 1- and 5-shot). A column
    # needs as many test classes as ways.
    columns = COLUMNS if dataset == "omniglot" else ((5, 1), (5, 5))
    skipped = [c for c in columns if c[0] > test.num_classes]
    columns = tuple(c for c in columns if c[0] <= test.num_classes)
    if not columns:
        raise ValueError(f"the test split has {test.num_classes} classes: too few for any {columns or skipped} column")
    for way, shot in skipped:
        print(f"skipping {way}-way {shot}-shot: the test split has {test.num_classes} classes", file=sys.stderr)
    if dev.type == "cpu" and dataset == "omniglot":
        from train.costs import UNDER_LOAD, eval_cost

        cost = eval_cost(episodes, columns)
        print(f"eval: {len(columns)} columns x {episodes:,} episodes: "
              + (f"{cost.line()}; {UNDER_LOAD}" if cost else "not measured on a CPU"), file=sys.stderr, flush=True)
    t = time.perf_counter()
    # The same episodes at any batch (drawn up front, matchnet.episodes): on a CPU 10 episodes at a time keep a
    # 20-way 5-shot batch's Conv-4 activations at ~2 GB instead of ~8 GB (docs/bench/eval_cpu_memory.log).
    accs = evaluate_table(model, test.to(dev), episodes=episodes, seed=seed, columns=columns,
                          batch=50 if dev.type == "cuda" else 10)
    result = {
        "checkpoint": str(folder), "dataset": dataset, "split": split, "test_classes": splits["test"].num_classes,
        "episodes": episodes, "seed": seed, "query_per_class": TEST_QUERY, "hardware": hardware(dev),
        "eval_seconds": round(time.perf_counter() - t, 1), "model": model.config,
        "accuracy": {f"{a.way}w{a.shot}s": {"mean": a.mean, "ci95": a.ci95} for a in accs},
    }
    if train_cfg is not None:
        result["train_config"] = {k: v for k, v in vars(train_cfg).items()}
    for a in accs:
        print(a)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


MIN_REPORTED_EPISODES = 1000  # the project's rule for an accuracy that goes beside a checkpoint or into the docs


def default_results_path(folder: Path, episodes: int, seed: int) -> Path:
    """CHECKPOINT/results.json for a full evaluation; a quick one (fewer episodes) goes to runs/eval/ instead, so
    that it never replaces the reported numbers of a shipped checkpoint."""
    if episodes >= MIN_REPORTED_EPISODES:
        return folder / "results.json"
    return ROOT / "runs" / "eval" / f"{folder.resolve().name}_{episodes}ep_seed{seed}.json"


def check_writable(out: Path) -> None:
    """The folder a result will be written to exists (or can be made) and takes a file."""
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write {out} ({e.strerror or e}); choose another --out") from None


def eval_download(pairs: list[str]) -> bool:
    """eval's --set: only download=true|false (fetch the data the protocol needs when it is missing)."""
    from matchnet.config import parse_sets

    sets = parse_sets(pairs)
    if set(sets) - {"download"} or not isinstance(sets.get("download", False), bool):
        raise ValueError(f"eval --set takes only download=true or download=false, got {' '.join(pairs)}")
    return sets.get("download", False)


def cmd_eval(args) -> None:
    from matchnet.results import write_results_md

    folder = Path(args.checkpoint)
    if args.episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {args.episodes}")
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such checkpoint folder")
    meta = training_meta(folder)  # which data the model was trained on
    dataset = args.dataset or meta["dataset"] or "omniglot"
    split = args.split or meta["split"] or ("ravi" if dataset == "miniimagenet" else "vinyals")
    download = eval_download(args.set)
    if download and args.protocol != "lake-runs":
        raise ValueError("eval --set download=true fetches Lake's runs: it goes with --protocol lake-runs")
    if args.protocol == "within-alphabet":  # Lake et al.'s test; writes runs/eval/, never results.json
        from table_within_alphabet import eval_checkpoint
        eval_checkpoint(args, folder, dataset, split, hardware)
        return
    if args.protocol == "lake-runs":  # Lake et al.'s 20 runs themselves (all_runs.zip); writes runs/eval/
        from table_within_alphabet import eval_lake_runs
        eval_lake_runs(args, folder, meta, hardware, download=download)
        return
    out = Path(args.out) if args.out else default_results_path(folder, args.episodes, args.seed)
    if args.write_docs and args.episodes < MIN_REPORTED_EPISODES:
        sys.exit(f"error: --write-docs needs at least {MIN_REPORTED_EPISODES} episodes per column "
                 f"(got {args.episodes})")
    evaluate_checkpoint(folder, dataset, split, args.data_root or "data", args.device or "auto", args.episodes,
                        args.seed, out, data_options=meta["data_options"])
    if args.write_docs:
        write_results_md(ROOT)


def cmd_ablate_scale(args) -> None:
    """Short runs with the config's recipe and different softmax scales; validation accuracy of each.

    Each variant trains in its own run folder and resumes like `train`: Ctrl-C or SIGTERM saves a resume point,
    prints one line and exits non-zero, with no row for the stopped variant and no next variant; the same command
    again continues (finished variants are read back from their runs), --restart starts every variant over."""
    from train.costs import UNDER_LOAD, duration, train_cost
    from matchnet.atomic import write_text
    from matchnet.data import load_splits
    from matchnet.distributed import resolve_device
    from matchnet.train import TrainConfig, train

    base = load_config(args)
    variants = {"paper (scale 1, fixed)": dict(scale=1.0, learn_scale=False),
                "scale 10, fixed": dict(scale=10.0, learn_scale=False),
                "scale 30, fixed": dict(scale=30.0, learn_scale=False),
                "scale learned (from 10)": dict(scale=10.0, learn_scale=True)}
    configs = {label: TrainConfig.from_dict({**vars(base), **change, "steps": args.steps,
                                             "val_every": args.steps, "val_episodes": args.val_episodes,
                                             "name": f"ablate-{label}",
                                             "out_dir": str(Path(args.out_dir) / label.replace(" ", "_"))})
               for label, change in variants.items()}
    device = resolve_device(base.device)
    if device.type == "cpu":
        costs = [train_cost(cfg) for cfg in configs.values()]
        if all(costs):
            print(f"ablate-scale: {len(configs)} variants x {args.steps:,} steps + {args.val_episodes:,} validation "
                  f"episodes each: ~{duration(sum(c.seconds for c in costs))} on a quiet 2-core CPU (estimate, "
                  f"per variant {costs[0].how}); {UNDER_LOAD}", flush=True)
        else:
            print("ablate-scale: the CPU time is not measured (no CPU record in docs/bench/)", flush=True)
    rows = []
    try:  # a Ctrl-C while the data loads (training handles its own): one line, nothing recorded
        splits = load_splits(base.dataset, base.split, base.data_root, base.download, **base.data_options)
    except KeyboardInterrupt:
        sys.exit("interrupted while loading the data: nothing was trained or recorded")
    for i, (label, cfg) in enumerate(configs.items(), 1):
        summary = train(cfg, splits=splits, resume=not args.restart)
        if summary["interrupted"]:
            print(f"interrupted at step {summary['steps']} of {args.steps} of variant {i}/{len(configs)} "
                  f"({label}); no row recorded for it. The resume point is {cfg.run_dir / 'last.safetensors'}: run "
                  "the same command again to continue", file=sys.stderr)
            sys.exit(128 + summary["signal"])
        log = [json.loads(x) for x in (cfg.run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
        last = log[-1] if log else {}
        if summary["steps"] != args.steps or last.get("step") != args.steps or \
                not any(k.startswith("val_") for k in last):
            raise ValueError(f"{cfg.run_dir}: the run holds {summary['steps']} steps and no final validation, not "
                             f"the {args.steps} asked for; pass --restart to train the variants again")
        rows.append({"variant": label, **variants[label], "steps": summary["steps"],
                     **{k: v for k, v in last.items() if k.startswith("val_") or k == "scale"},
                     "seconds": last.get("time")})  # at the final validation: a resumed rerun adds nothing
        print(rows[-1], flush=True)
    out = Path(args.out_dir) / "ablation_scale.json"
    write_text(out, json.dumps({"recipe": vars(base), "val_episodes": args.val_episodes, "rows": rows,
                                "hardware": hardware(device)}, indent=2) + "\n")
    print(f"wrote {out}")


def cmd_publish(args) -> None:
    """Upload a checkpoint folder to the Hub, or with --dry-run write what would be uploaded."""
    from matchnet.hub import check_repo_id, publish, stage

    check_repo_id(args.repo_id)
    if args.dry_run:
        files = stage(args.checkpoint, args.dry_run, args.repo_id)
        print(f"dry run: would upload to {args.repo_id}" + (f" (branch {args.revision})" if args.revision else "")
              + (" as a private repo" if args.private else "") + f"; the files are in {args.dry_run}:")
        for f in files:
            print(f"  {f.name:<20} {f.stat().st_size:>9,} bytes")
        return
    url = publish(args.checkpoint, args.repo_id, private=args.private, revision=args.revision)
    print(f"published {args.checkpoint} to https://huggingface.co/{args.repo_id}\n  commit: {url}")


def cmd_rebuild(args) -> None:
    from train import costs
    from train.rebuild import run  # the orchestration lives beside this file

    costs.use_records(train=args.train_rate_record, eval=args.eval_rate_record)
    try:
        run(Path(args.root).resolve() if args.root else ROOT, device=args.device or "auto", data_root=args.data_root, push_to=args.push_to,
            private=args.private, only=args.only, restart=args.restart, episodes=args.episodes,
            plan_only=args.plan, evaluate=evaluate_checkpoint, hardware=hardware)
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: run the same command again to resume where it stopped")


QUICK_ROWS = {"omniglot": "pixels", "miniimagenet": "pixels"}  # rows that train nothing


def cmd_table(args) -> None:
    """Each table lives in its own module (train/table_<task>.py) with a main(args) entry point.

    A table is one process's work: its many small trainings, evaluations and files are run in order, on one
    device. Started by torchrun, rank 0 runs the whole table as a plain process (no process group, so its
    trainings are not distributed) and every other rank stops at once, writing nothing. To train a table's
    Matching Networks on N GPUs, train their configs first with `torchrun ... train`: the table reuses
    finished runs. `table imagenet` is the exception: its stages are data-parallel, every rank takes part, and
    rank 0 alone evaluates and writes (train/table_imagenet.py).
    """
    import importlib

    from matchnet.distributed import launch_rank
    from train.costs import table_cost

    rank = launch_rank()
    if rank != 0 and args.task != "imagenet":  # table imagenet's stages are data-parallel (train/table_imagenet.py)
        print(f"rank {rank}: `table {args.task}` runs on rank 0 alone (one process writes the table); nothing to do "
              "here", file=sys.stderr)
        return
    if args.quick:  # a first try: rows that train nothing, 100 episodes, outputs outside docs/
        if args.task not in QUICK_ROWS:
            raise ValueError(f"--quick is for {' and '.join(QUICK_ROWS)}; table {args.task}'s rows all train "
                             f"(see train/run.py table --help)")
        os.environ.setdefault("TABLE_ROWS", QUICK_ROWS[args.task])
        os.environ.setdefault("TABLE_OUT", f"runs/table-{args.task}-quick")
        args.episodes = min(args.episodes, 100)
        print(f"table {args.task} --quick: rows {os.environ['TABLE_ROWS']}, {args.episodes} episodes, outputs in "
              f"{os.environ['TABLE_OUT']}/ (docs/ untouched)", flush=True)
    elif rank == 0 and (args.device == "cpu" or (args.device == "auto" and not __import__("torch").cuda.is_available())):
        print(f"table {args.task} on a CPU: {table_cost(args.task)}", flush=True)
    importlib.import_module(f"table_{args.task}").main(args)
    if not args.quick and rank == 0:  # under torchrun (table imagenet) one process writes the docs
        from matchnet.results import write_results_md

        write_results_md(ROOT)


def table_help() -> str:
    """`table --help`'s epilog: each table module's docstring (read, not imported: no torch) and its CPU cost."""
    import ast

    from train.costs import table_cost

    parts = ["--quick: a first try in seconds: " + "; ".join(f"{t}: rows {r}" for t, r in QUICK_ROWS.items())
             + " (no training), 100 episodes, outputs in runs/table-TASK-quick/, docs/ untouched. "
             "The TABLE_* variables below still apply (TABLE_ROWS, TABLE_OUT set by --quick unless given)."]
    for task in ("omniglot", "miniimagenet", "ptb", "imagenet"):
        doc = ast.get_docstring(ast.parse((ROOT / "train" / f"table_{task}.py").read_text())) or ""
        parts.append(f"== table {task} (train/table_{task}.py)\n{doc}\nCost on a CPU: {table_cost(task)}.")
    return "\n\n".join(parts)


PREDICT_PROGRESS_FROM = 32  # queries: from this many on, a progress bar on stderr


def cmd_predict(args) -> None:
    """Classify query images against a support folder (one subfolder of images per class), any checkpoint."""
    from matchnet.distributed import resolve_device
    from matchnet.inputs import query_files
    from matchnet.predict import Predictor

    queries = [f for q in args.query for f in query_files(q)]  # every path checked before the model loads
    try:
        predictor = Predictor(args.checkpoint, args.support, resize=args.resize,
                              device=resolve_device(args.device or "cpu"))
        out = predictor.predict(queries, progress=len(queries) >= PREDICT_PROGRESS_FROM)
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: nothing was classified")
    if args.json:
        for i in range(len(out)):
            print(json.dumps(out.record(i)))
        return
    rows = [(q, label, f"{out.probabilities[i].max():.3f}", out.record(i)["most_attended"])
            for i, (q, label) in enumerate(zip(out.queries, out.labels))]
    head = ("query", "prediction", "probability", "most attended support image")
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(3)]
    for r in [head, *rows]:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, config=True):
        if config:
            p.add_argument("--config", required=True, help="a TOML file from train/configs/")
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override one config option (repeatable), e.g. --set steps=100")
        p.add_argument("--device", choices=["auto", "cuda", "cpu"], help="where to run (default: auto)")
        p.add_argument("--data-root", help="folder holding omniglot-py/ or omniglot/omniglot-py/ (default: the "
                                           "config's, or ./data)")

    p = sub.add_parser("train", help="train a model from a config (resumes from runs/<name>/last.safetensors)")
    common(p)
    p.add_argument("--restart", action="store_true", help="ignore an existing resume point and start over")
    p.add_argument("--eval", action="store_true", help="evaluate the best checkpoint on the test split after")
    p.add_argument("--episodes", type=int, default=1000, help="test episodes per column (with --eval)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test episodes (with --eval)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy ± 95%% CI on the test split for the paper's four columns")
    common(p, config=False)
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--dataset", help="default: from the folder's training.json, else omniglot")
    p.add_argument("--split", help="vinyals | lake (omniglot), ravi (miniimagenet), random | lists (folder); "
                                   "default: the training's, else vinyals")
    p.add_argument("--episodes", type=int, default=1000, help="test episodes per column (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test episodes (default 0)")
    p.add_argument("--out", help="results JSON (default: CHECKPOINT/results.json with --episodes >= 1000, "
                                 "else runs/eval/NAME_<N>ep_seed<S>.json)")
    p.add_argument("--write-docs", action="store_true", help="regenerate docs/RESULTS.md from every results.json")
    p.add_argument("--protocol", choices=["standard", "within-alphabet", "lake-runs"], default="standard",
                   help="standard: the paper's four columns; within-alphabet: Lake et al.'s 20-way (and 5-way) "
                        "1-shot with classes from one alphabet, support and queries by different drawers "
                        "(resampled); lake-runs: Lake et al.'s 20 published runs, all_runs.zip from "
                        "brendenlake/omniglot, read from DATA_ROOT/omniglot-py/all_runs.zip or all_runs/ (or "
                        "--data-root pointing at the zip or folder itself)")
    p.add_argument("--set", action="append", default=[], metavar="download=true",
                   help="download=true: fetch the data a protocol needs when missing (lake-runs: all_runs.zip)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("ablate-scale", help="the softmax-scale (temperature) ablation on validation")
    common(p)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--val-episodes", type=int, default=1000)
    p.add_argument("--out-dir", default="runs/ablate-scale")
    p.add_argument("--restart", action="store_true", help="train every variant from scratch (default: resume)")
    p.set_defaults(func=cmd_ablate_scale)

    p = sub.add_parser("publish", help="upload a checkpoint folder (config, weights, card, results, log) to the Hub")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder, e.g. assets/omniglot-vinyals")
    p.add_argument("--repo-id", required=True, help="USER/NAME on huggingface.co (created if absent)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="a branch to commit to (created if absent; default main)")
    p.add_argument("--dry-run", metavar="OUTDIR", help="write the files that would be uploaded to OUTDIR instead")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("rebuild", help="retrain, evaluate and re-ship every shipped model (resumable)")
    common(p, config=False)
    p.add_argument("--push-to", metavar="USER[/PREFIX]", help="also publish each, to USER/PREFIX-<name>")
    p.add_argument("--private", action="store_true", help="with --push-to: create the repos private")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="rebuild only this model (repeatable)")
    p.add_argument("--restart", action="store_true", help="forget resume points and finished steps")
    p.add_argument("--episodes", type=int, default=1000, help="test episodes per column (default 1000)")
    p.add_argument("--plan", action="store_true", help="print the plan and stop")
    p.add_argument("--root", help="the checkout whose train/configs/, assets/ and docs/ are rebuilt (default: this one)")
    p.add_argument("--train-rate-record", help="a CPU training-speed record (JSON) for the estimates, instead of "
                                               "docs/bench/train_speed_cpu.json")
    p.add_argument("--eval-rate-record", help="a CPU test-speed record (JSON) for the estimates, instead of "
                                              "docs/bench/eval_cpu_omniglot-vinyals.json")
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("table", help="train what is missing and rebuild one of the paper's tables in docs/RESULTS.md "
                                     "(one process; under torchrun rank 0 alone, but for imagenet)",
                       epilog=table_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["omniglot", "ptb", "miniimagenet", "imagenet"],
                   help="omniglot: Table 1 and MNIST transfer; ptb: section 4.1.3; miniimagenet: Table 2; "
                        "imagenet: Table 3")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--data-root", default="data",
                   help="folder holding omniglot-py/ (or omniglot/omniglot-py/), mnist/, ptb/")
    p.add_argument("--episodes", type=int, default=1000, help="test episodes per cell (at least 1000 for the docs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test episodes")
    p.add_argument("--quick", action="store_true",
                   help="a first try: the rows that train nothing, 100 episodes, outputs in runs/ (see below)")
    p.set_defaults(func=cmd_table)
    # table imagenet (Table 3): which held-out classes; train/table_imagenet.py has the rest
    p.add_argument("--split", choices=["rand", "dogs"], default="rand",
                   help="imagenet: hold out L_rand or L_dogs (Appendix C; matchnet/data/splits/imagenet/)")

    p = sub.add_parser("predict", help="classify your own images: a support folder (one subfolder per class) and "
                                       "query files or folders, with any checkpoint")
    p.add_argument("--checkpoint", default="omniglot-vinyals",
                   help="a checkpoint folder, a shipped model's name or a Hub repo id (default omniglot-vinyals)")
    p.add_argument("--support", required=True, metavar="DIR",
                   help="DIR/<class>/<images>: the subfolder names are the classes")
    p.add_argument("--query", required=True, nargs="+", metavar="FILE_OR_DIR",
                   help="query images, or folders of them (every image file under them, sorted)")
    p.add_argument("--json", action="store_true", help="one JSON object per query (label, probabilities, "
                                                       "attention and cosine per support image)")
    p.add_argument("--resize", choices=["crop", "stretch"],
                   help="photo models: how images are made square (default: as the checkpoint was trained)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], help="where to run (default: cpu)")
    p.set_defaults(func=cmd_predict)

    # `run.py --help` shows every command's options, not only the command names
    parser.epilog = "\n".join(f"{'-' * 100}\n{p.format_help()}" for p in sub.choices.values())
    args = parser.parse_args(argv)
    old_term = _on_sigterm_raise()
    try:
        seed = getattr(args, "seed", None)  # eval, train --eval, table: torch's generators take 64-bit seeds
        if isinstance(seed, int) and not 0 <= seed <= 2 ** 63 - 1:
            raise ValueError(f"--seed must be between 0 and 2**63-1, got {seed}")
        if args.command != "publish":  # every command that computes: one inter-op thread (matchnet/cpu.py)
            from matchnet.cpu import configure_threads

            configure_threads()
        args.func(args)
    except KeyboardInterrupt as e:  # Ctrl-C (a second one, during training) or SIGTERM: one line, no traceback
        how = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
        print(f"\ninterrupted ({how}): stopped at once; every file written so far is complete (written "
              "atomically): run the same command again", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:  # the library's own errors carry a message meant for the user: one line, no traceback
        if isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)) or \
                type(e).__module__.startswith("matchnet"):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (start-up, data decoding, evaluation): stop as Ctrl-C would."""


def _on_sigterm_raise():
    """SIGTERM raises Terminated until the engine installs its own handler (which saves a resume point first);
    returns the handler it replaced (None off the main thread, where signals cannot be set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked worker (data decoding) inherited this: end as SIGTERM would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated()
    return signal.signal(signal.SIGTERM, handler)


def _reexec_with_malloc_settings() -> None:
    """matchnet/cpu.py's re-exec, loaded as a file: importing the package would import torch twice."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_matchnet_cpu", ROOT / "matchnet" / "cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.reexec_with_malloc_settings()


if __name__ == "__main__":
    _reexec_with_malloc_settings()  # CPU training steps up to 3x faster with glibc's malloc tuned (matchnet/cpu.py)
    sys.exit(main())
