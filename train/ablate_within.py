#!/usr/bin/env python
"""What each ingredient of the within-alphabet recipe gives: one short run per arm, tested on the same episodes.

  python train/ablate_within.py --data-root DIR [--steps 1200] [--episodes 1000] [--threads 1]
  python train/ablate_within.py --markdown-only      # docs/results/within_ablation.md again from the JSON

Every arm is train/configs/omniglot_lake_within.toml at the same training budget (--steps steps of
--meta-batch 20-way episodes) with one ingredient set, against the base arm with none of them:
hard negatives (half the episodes within one alphabet, support and queries by one drawer each), Koch et al.'s
affine augmentation, FCE, and training on images put through the demo's preprocessing; "all" has the four.
Settings are chosen on the 5 held-out background alphabets (the split's val); the test is Lake's: all 20
images_evaluation alphabets, upright, resampled within-alphabet episodes (one alphabet, one drawer for the
support and another for the queries, one query per class), as drawn and through the demo's preprocessing,
and the standard 20-way / 5-way 1-shot columns of the same test classes (as drawn). Every arm sees the same test
episodes, so each difference from the base arm is paired: mean per-episode difference +- its 95% interval.
Runs are resumable (runs/within-ablation/<arm>/): interrupt and rerun the same command.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE_TOML = ROOT / "train" / "configs" / "omniglot_lake_within.toml"
OUT = ROOT / "docs" / "results" / "within_ablation"
NONE = {"within_alphabet": 0.0, "augment": False, "fce": False, "preprocess": "none"}
ARMS = {
    "base": {},
    "hard negatives": {"within_alphabet": 0.5},
    "augmentation": {"augment": True},
    "FCE": {"fce": True},
    "demo preprocessing": {"preprocess": "app"},
    "all": {"within_alphabet": 0.5, "augment": True, "fce": True, "preprocess": "app"},
}
# (column, way, seed): within-alphabet columns as train/table_within_alphabet.py seeds them; the standard
# columns as evaluate_table seeds them (5w1s: seed 0, 20w1s: seed 2000)
COLUMNS = (("within 20w1s", 20, 0), ("within 5w1s", 5, 1000), ("standard 20w1s", 20, 2000),
           ("standard 5w1s", 5, 0))


def slug(arm: str) -> str:
    return arm.replace(" ", "-")


def arm_config(arm: str, args):
    from matchnet.train import TrainConfig

    overrides = {**NONE, **ARMS[arm], "name": f"within-{slug(arm)}", "steps": args.steps,
                 "meta_batch": args.meta_batch, "warmup_steps": min(100, args.steps // 10),
                 "val_every": max(1, args.steps // 3), "checkpoint_every": max(1, args.steps // 6),
                 "val_episodes": 1000, "device": args.device, "data_root": args.data_root,
                 "out_dir": str(Path(args.runs) / slug(arm))}
    return TrainConfig.from_toml(BASE_TOML, **overrides)


def per_episode(model, batches) -> "torch.Tensor":
    """Per-episode accuracy (fraction of queries right) over the batches, in eval mode, fp32."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for ep in batches:
            log_probs = model(ep.support, ep.support_labels, ep.query, ep.n_way)[0]
            out.append((log_probs.argmax(-1) == ep.query_labels).float().mean(1))
    return torch.cat(out)


def mean_ci(values) -> tuple[float, float]:
    values = values.double()
    return 100 * values.mean().item(), 100 * 1.96 * values.std().item() / math.sqrt(values.numel())


def test_arms(arms: list[str], args) -> dict:
    """Every arm's best/ on the same test episodes; paired differences from the base arm."""
    import torch

    from matchnet.alphabets import upright, within_alphabet_episodes
    from matchnet.checkpoint import load_model
    from matchnet.data import load_splits
    from matchnet.episodes import evaluation_episodes
    from matchnet.inference import preprocess_split

    test = upright(load_splits("omniglot", "lake-alphabets", args.data_root)["test"])
    inputs = {"as drawn": test, "demo preprocessing": preprocess_split(test)}
    scores: dict = {}
    for arm in arms:
        model = load_model(arm_config(arm, args).run_dir / "best", torch.device("cpu"))
        model.use_channels_last()
        for input_name, split in inputs.items():
            for column, way, seed in COLUMNS:
                if column.startswith("standard") and input_name != "as drawn":
                    continue  # the standard columns as RESULTS.md reports them: as drawn
                if column.startswith("within"):
                    batches = within_alphabet_episodes(split, way, 1, 1, args.episodes, seed, 50)
                else:
                    batches = evaluation_episodes(split, way, 1, 15, args.episodes, seed, 50)
                scores.setdefault(arm, {}).setdefault(input_name, {})[column] = per_episode(model, batches)
        print(f"tested {arm}", flush=True)
    table = {}
    for arm in arms:
        table[arm] = {}
        for input_name, cols in scores[arm].items():
            for column, values in cols.items():
                mean, ci = mean_ci(values)
                entry = {"mean": mean, "ci95": ci}
                if arm != "base" and "base" in scores:
                    entry["minus_base"], entry["minus_base_ci95"] = mean_ci(values - scores["base"][input_name][column])
                table[arm][f"{column}, {input_name}"] = entry
    return table


def markdown(record: dict) -> str:
    cols = list(next(iter(record["test"].values())).keys())
    lines = ["## Within-alphabet recipe: what each ingredient gives (paired, same episodes)", "",
             "Generated by `train/ablate_within.py` from `docs/results/within_ablation.json`; do not edit.", "",
             "| arm | best val within 20w1s (5 held-out background alphabets) | "
             + " | ".join(f"test: {c}" for c in cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]
    for arm, row in record["test"].items():
        cells = []
        for c in cols:
            e = row[c]
            cell = f"{e['mean']:.2f} ± {e['ci95']:.2f}"
            if "minus_base" in e:
                cell += f" ({e['minus_base']:+.2f} ± {e['minus_base_ci95']:.2f})"
            cells.append(cell)
        lines.append(f"| {arm} | {record['val'][arm]:.2f} | " + " | ".join(cells) + " |")
    r = record
    lines += ["", f"- Command: `{r['command']}` ({r['hardware']}, torch {r['torch']}; {r['seconds']:.0f} s in all).",
              f"- Training: each arm `{r['base_config']}` with {r['steps']} steps of {r['meta_batch']} 20-way "
              "1-shot episodes (5 queries per class), seed 0; the arm sets one ingredient (\"all\": the four); "
              "best/ chosen on validation (within-alphabet 20-way 1-shot on the 5 held-out background "
              "alphabets, 1,000 episodes, seed 12345).",
              f"- Test: Lake's 20 images_evaluation alphabets, upright; {r['episodes']} episodes per column, the "
              "same for every arm (within-alphabet: seed 0 for 20-way, 1000 for 5-way; standard: 2000 and 0, "
              "15 queries per class). ± is the 95% interval over episodes; in brackets the paired difference "
              "from the base arm on the same episodes, ± its 95% interval.",
              "- A short budget for every arm: the ranking of ingredients, not the accuracy of the shipped recipe "
              "(docs/results/within_alphabet.md has that)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="data")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="cpu")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--meta-batch", type=int, default=3, help="20-way episodes per step")
    p.add_argument("--episodes", type=int, default=1000, help="test episodes per column (>= 1000 for the docs)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ", ".join(ARMS))
    p.add_argument("--runs", default="runs/within-ablation")
    p.add_argument("--markdown-only", action="store_true")
    args = p.parse_args(argv)
    from matchnet.atomic import write_text

    if args.markdown_only:
        write_text(OUT.with_suffix(".md"), markdown(json.loads(OUT.with_suffix(".json").read_text())))
        return
    arms = [a.strip() for a in args.arms.split(",")]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        sys.exit(f"error: --arms {unknown}: choose from {', '.join(ARMS)}")
    import torch

    from matchnet.engine import hardware
    from matchnet.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    val = {}
    for arm in arms:
        cfg = arm_config(arm, args)
        print(f"arm {arm}: {cfg.run_dir}", flush=True)
        summary = train(cfg)
        if summary["interrupted"]:
            sys.exit(f"interrupted in arm {arm}: rerun the same command to resume")
        val[arm] = summary["best_val"]
    record = {"command": "python train/ablate_within.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "hardware": hardware(torch.device("cpu")), "torch": torch.__version__, "steps": args.steps,
              "meta_batch": args.meta_batch, "episodes": args.episodes, "arms": {a: ARMS[a] for a in arms},
              "base_config": str(BASE_TOML.relative_to(ROOT)), "val": val, "test": test_arms(arms, args)}
    record["seconds"] = time.perf_counter() - t0
    if args.episodes >= 1000:
        write_text(OUT.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
        write_text(OUT.with_suffix(".md"), markdown(record))
        print(f"wrote {OUT.with_suffix('.md')}")
    else:
        print(json.dumps(record["test"], indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "train"))
    from run import _reexec_with_malloc_settings

    _reexec_with_malloc_settings()
    main()
