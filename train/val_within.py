#!/usr/bin/env python
"""Within-alphabet candidates compared on validation, as drawn and through the demo's preprocessing, paired.

  python train/val_within.py --data-root DIR --model NAME=FOLDER [--model NAME=FOLDER ...] [--episodes 1000]
      [--alphabets NAME[,NAME...]] [--out docs/results/within_val.json]

The validation set is the one omniglot_lake_within.toml chooses on: the 5 images_background alphabets held out of
its training (split "lake-alphabets"), upright. Each column is within-alphabet 1-shot (one alphabet, support by
one drawer and queries by another, one query per class) on the same 1,000 episodes for every model (seed 12345,
as in training's validation), or only of --alphabets (e.g. Hebrew: the one background alphabet held out of the
training of both the vinyals split and the lake-alphabets split, so models of those splits are compared on
validation); the same episodes again with every image put through the demo's preprocessing
(what a visitor's drawing becomes). A model trained at another side (56 px) sees the same episodes at its own side. Training validates as drawn only; this adds the column the demo lives on, so
that a recipe trained for the demo is chosen on validation, not on test. The first model is the reference: every
other row has its paired difference on the same episodes, with a 95% interval. Models run in fp32.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "train"))

COLUMNS = ((20, "within 20w1s"), (5, "within 5w1s"))
SEED = 12345  # training's validation episodes (matchnet.train.validate)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER",
                   help="a checkpoint folder (a run's best/, or assets/NAME); the first is the reference")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--alphabets", help="comma-separated: only these of the 5 validation alphabets")
    p.add_argument("--out", help="write the record (JSON) here; the table is printed either way")
    args = p.parse_args(argv)
    alphabets = set(args.alphabets.split(",")) if args.alphabets else None
    models = []
    for item in args.model:
        name, sep, folder = item.partition("=")
        if not sep or not name or not Path(folder, "model.safetensors").is_file():
            sys.exit(f"--model {item!r}: give NAME=FOLDER, FOLDER holding model.safetensors")
        models.append((name, Path(folder)))

    import torch

    from ablate_within import mean_ci, per_episode
    from matchnet.alphabets import upright, within_alphabet_episodes
    from matchnet.checkpoint import load_model
    from matchnet.data import load_splits
    from matchnet.inference import preprocess_split

    t0 = time.perf_counter()
    by_size: dict[int, dict] = {}  # the validation images at each model's side (28 px, or 56 for a 56-px model)
    scores: dict = {}
    for name, folder in models:
        model = load_model(folder, torch.device("cpu"))
        model.use_channels_last()
        size = int(model.config["image_size"])
        if size not in by_size:
            try:
                val = upright(load_splits("omniglot", "lake-alphabets", args.data_root, image_size=size)["val"],
                              alphabets)
            except ValueError as e:
                sys.exit(f"--alphabets {args.alphabets}: {e}")
            by_size[size] = {"as drawn": val, "demo preprocessing": preprocess_split(val)}
        inputs = by_size[size]
        # the episodes pick classes and drawers by index: the same episodes at every side, so still paired
        assert all(v["as drawn"].names == inputs["as drawn"].names for v in by_size.values())
        for input_name, split in inputs.items():
            for way, column in COLUMNS:
                batches = within_alphabet_episodes(split, way, 1, 1, args.episodes, SEED, 50)
                scores.setdefault(name, {})[f"{column}, {input_name}"] = per_episode(model, batches)
        print(f"scored {name}", flush=True)
    ref = models[0][0]
    table = {}
    for name, _ in models:
        table[name] = {}
        for key, values in scores[name].items():
            mean, ci = mean_ci(values)
            entry = {"mean": mean, "ci95": ci}
            if name != ref:
                entry["minus_ref"], entry["minus_ref_ci95"] = mean_ci(values - scores[ref][key])
            table[name][key] = entry
    record = {"command": "python train/val_within.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "hardware": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
              "torch": torch.__version__, "episodes": args.episodes,
              "alphabets": sorted(alphabets) if alphabets else "the 5 validation alphabets", "seed": SEED, "reference": ref,
              "models": {name: str(folder) for name, folder in models}, "results": table,
              "seconds": round(time.perf_counter() - t0, 1)}
    keys = list(table[ref])
    print("| model | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, row in table.items():
        cells = [f"{row[k]['mean']:.2f} ± {row[k]['ci95']:.2f}"
                 + (f" ({row[k]['minus_ref']:+.2f} ± {row[k]['minus_ref_ci95']:.2f})" if "minus_ref" in row[k] else "")
                 for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        from matchnet.atomic import write_text

        write_text(Path(args.out), json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
