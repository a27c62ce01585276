#!/usr/bin/env python
"""Does bf16 autocast on a CPU keep the accuracy? The CPU recipe trained in fp32, against the bf16 run of the
time-to-accuracy benchmark (docs/bench/tta_cpu.json), scored on the same validation episodes.

  python bench/bf16_parity.py --data-root ../shared/data --steps 1500 --out docs/bench/bf16_parity_cpu.json

Same config (train/configs/omniglot_vinyals.toml cut to --steps), seed, training episodes and validation
cadence as that run (every 500 steps, 300 episodes), with amp = false (channels_last kept: a layout, not a
precision); its best model is scored as tta_cpu.json's runs are (1,000 validation episodes per column, seeds
12345 and 13345, fp32). Validation only: the test set is not touched.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="data")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--tta-record", default=str(ROOT / "docs" / "bench" / "tta_cpu.json"))
    p.add_argument("--out", default="bf16_parity_cpu.json")
    args = p.parse_args()
    import torch

    from matchnet.atomic import write_text
    from matchnet.checkpoint import load_model
    from matchnet.data import load_splits
    from matchnet.engine import hardware
    from matchnet.train import TrainConfig, train
    from train_speed import SHIPPED_TOML, VAL_SEED, table_accuracy

    bf16 = next(r for r in json.loads(Path(args.tta_record).read_text())["time_to_accuracy"]["runs"]
                if r["steps"] == args.steps)
    out_dir = tempfile.mkdtemp(prefix="matchnet_fp32_")
    cfg = TrainConfig.from_toml(SHIPPED_TOML, device="cpu", steps=args.steps, data_root=args.data_root,
                                out_dir=out_dir, progress=False, val_every=500, val_episodes=300, log_every=250,
                                checkpoint_every=10 ** 6, amp=False)
    t = time.perf_counter()
    splits = load_splits("omniglot", "vinyals", args.data_root)
    summary = train(cfg, splits=splits, resume=False)
    best = load_model(Path(out_dir) / "best", torch.device("cpu"))
    val = table_accuracy(best, splits["val"], 1000, VAL_SEED, ((5, 1), (20, 1)))
    record = {"command": "python " + " ".join(sys.argv), "hardware": hardware(torch.device("cpu")),
              "torch": torch.__version__, "steps": args.steps, "seconds": round(time.perf_counter() - t, 1),
              "fp32": {"val": val, "train_s": summary["seconds"]},
              "bf16": {"val": bf16["val"], "train_s": bf16["train_s"], "from": args.tta_record},
              "difference_bf16_minus_fp32": {k: round(bf16["val"][k]["mean"] - val[k]["mean"], 2) for k in val}}
    write_text(Path(args.out), json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "train"))
    from run import _reexec_with_malloc_settings

    _reexec_with_malloc_settings()
    main()
