#!/usr/bin/env python
"""matchnet's command line: train, evaluate, and record results.

  python train/run.py train --config train/configs/omniglot_vinyals.toml [--device cuda] [--set key=value ...]
  torchrun --nproc_per_node=N train/run.py train --config ...   (data-parallel over N GPUs or CPU processes)
  python train/run.py eval --checkpoint assets/omniglot-vinyals [--episodes 1000] [--write-docs]
  python train/run.py ablate-scale --config train/configs/omniglot_vinyals.toml --steps 600
  python train/run.py publish --checkpoint assets/omniglot-vinyals --repo-id USER/NAME [--dry-run OUTDIR]
  python train/run.py rebuild --device cuda [--push-to USER/PREFIX] [--data-root DIR]
  python train/run.py table {omniglot,ptb,miniimagenet} [--device cuda]   (one process: see cmd_table)

Every option of a config file can be overridden with --set key=value (values are TOML: --set fce=true).
"""
from __future__ import annotations

import argparse
import json
import os
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
    options = dict(data_options or {})
    if dataset != "omniglot":  # natural images: decode at the size the model was trained at
        options["image_size"] = model.config["image_size"]
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
    t = time.perf_counter()
    accs = evaluate_table(model, test.to(dev), episodes=episodes, seed=seed, columns=columns)
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
    if args.protocol == "within-alphabet":  # Lake et al.'s test; writes runs/eval/, never results.json
        from table_within_alphabet import eval_checkpoint
        eval_checkpoint(args, folder, dataset, split, hardware)
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
    """Short runs with the config's recipe and different softmax scales; validation accuracy of each."""
    from matchnet.data import load_splits
    from matchnet.distributed import resolve_device
    from matchnet.train import TrainConfig, train

    base = load_config(args)
    variants = {"paper (scale 1, fixed)": dict(scale=1.0, learn_scale=False),
                "scale 10, fixed": dict(scale=10.0, learn_scale=False),
                "scale 30, fixed": dict(scale=30.0, learn_scale=False),
                "scale learned (from 10)": dict(scale=10.0, learn_scale=True)}
    rows = []
    splits = load_splits(base.dataset, base.split, base.data_root, base.download)
    for label, change in variants.items():
        cfg = TrainConfig.from_dict({**vars(base), **change, "steps": args.steps,
                                     "val_every": args.steps, "val_episodes": args.val_episodes,
                                     "name": f"ablate-{label}", "out_dir": str(Path(args.out_dir) / label.replace(' ', '_')),
                                     "progress": False})
        summary = train(cfg, splits=splits, resume=False)
        log = [json.loads(x) for x in (cfg.run_dir / "log.jsonl").read_text().splitlines()]
        rows.append({"variant": label, **change, "steps": args.steps, **{k: v for k, v in log[-1].items()
                     if k.startswith("val_") or k == "scale"}, "seconds": round(summary["seconds"], 1)})
        print(rows[-1], flush=True)
    out = Path(args.out_dir) / "ablation_scale.json"
    out.write_text(json.dumps({"recipe": vars(base), "val_episodes": args.val_episodes, "rows": rows,
                               "hardware": hardware(resolve_device(base.device))}, indent=2) + "\n")
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
    from train.rebuild import run  # the orchestration lives beside this file

    try:
        run(ROOT, device=args.device or "auto", data_root=args.data_root, push_to=args.push_to,
            private=args.private, only=args.only, restart=args.restart, episodes=args.episodes,
            plan_only=args.plan, evaluate=evaluate_checkpoint, hardware=hardware)
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: run the same command again to resume where it stopped")


def cmd_table(args) -> None:
    """Each table lives in its own module (train/table_<task>.py) with a main(args) entry point.

    A table is one process's work: its many small trainings, evaluations and files are run in order, on one
    device. Started by torchrun, rank 0 runs the whole table as a plain process (no process group, so its
    trainings are not distributed) and every other rank stops at once, writing nothing. To train a table's
    Matching Networks on N GPUs, train their configs first with `torchrun ... train`: the table reuses
    finished runs.
    """
    import importlib

    from matchnet.distributed import launch_rank
    from matchnet.results import write_results_md

    rank = launch_rank()
    if rank != 0:
        print(f"rank {rank}: `table` runs on rank 0 alone (one process writes the table); nothing to do here",
              file=sys.stderr)
        return
    importlib.import_module(f"table_{args.task}").main(args)
    write_results_md(ROOT)


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
        p.add_argument("--data-root", help="folder holding omniglot-py/ (default: the config's, or ./data)")

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
    p.add_argument("--protocol", choices=["standard", "within-alphabet"], default="standard",
                   help="standard: the paper's four columns; within-alphabet: Lake et al.'s 20-way (and 5-way) "
                        "1-shot with classes from one alphabet, support and queries by different drawers")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("ablate-scale", help="the softmax-scale (temperature) ablation on validation")
    common(p)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--val-episodes", type=int, default=1000)
    p.add_argument("--out-dir", default="runs/ablate-scale")
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
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("table", help="train what is missing and rebuild one of the paper's tables in docs/RESULTS.md "
                                     "(one process; under torchrun rank 0 alone)")
    p.add_argument("task", choices=["omniglot", "ptb", "miniimagenet"],
                   help="omniglot: Table 1 and MNIST transfer; ptb: section 4.1.3; miniimagenet: Table 2")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--data-root", default="data", help="folder holding omniglot-py/, mnist/, ptb/")
    p.add_argument("--episodes", type=int, default=1000, help="test episodes per cell (at least 1000 for the docs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test episodes")
    p.set_defaults(func=cmd_table)

    # `run.py --help` shows every command's options, not only the command names
    parser.epilog = "\n".join(f"{'-' * 100}\n{p.format_help()}" for p in sub.choices.values())
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except Exception as e:  # the library's own errors carry a message meant for the user: one line, no traceback
        if isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)) or \
                type(e).__module__.startswith("matchnet"):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
