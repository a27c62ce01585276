#!/usr/bin/env python
"""What a full Table 3 run costs, estimated (docs/IMAGENET.md): measured here at tiny scale on a CPU, scaled by
FLOPs to the whole recipe (train/configs/imagenet_*.toml).

Measured: (1) forward FLOPs per image of each backbone (torch's FlopCounterMode: exact, not a timing);
(2) the CPU's training throughput on the real architecture at a tiny batch (a few steps: the engine's step,
forward + backward + Adam), as FLOP/s; (3) JPEG decode + the training transform per CPU core, on synthetic
500 x 375 JPEGs (ILSVRC's typical size). Everything else is arithmetic, written into the record.

    python bench/imagenet_cost.py --out docs/bench/imagenet_cost_cpu.json
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from matchnet.atomic import write_text  # noqa: E402
from matchnet.imagenet.backbones import IMAGE_SIZE, Classifier  # noqa: E402
from matchnet.imagenet.data import transforms  # noqa: E402

EVAL_IMAGES = {"rand": (111 + 889) * 50, "dogs": (118 + 882) * 50}  # val/ images of L and ≠L, per split


def forward_flops(arch: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = Classifier(arch, 1000).eval()
    x = torch.rand(1, 3, IMAGE_SIZE[arch], IMAGE_SIZE[arch])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def train_rate(arch: str, batch: int, steps: int) -> dict:
    """FLOP/s of training steps on this CPU (3 x forward FLOPs per image: forward + backward)."""
    torch.manual_seed(0)
    model = Classifier(arch, 889).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, IMAGE_SIZE[arch], IMAGE_SIZE[arch])
    y = torch.randint(889, (batch,))
    times = []
    for i in range(steps + 1):  # the first step is warm-up
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return {"batch": batch, "steps_timed": steps, "seconds_per_step": sorted(times)[len(times) // 2]}


def decode_rate(images: int = 60) -> dict:
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(images):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    out = {}
    for arch, size in IMAGE_SIZE.items():
        tf = transforms(size, train=True)
        torch.set_num_threads(1)
        t = time.perf_counter()
        for b in blobs:
            with Image.open(io.BytesIO(b)) as img:
                img.draft("RGB", (size * 2, size * 2))
                tf(img.convert("RGB"))
        out[arch] = images / (time.perf_counter() - t)
    return {"images_per_second_per_core": out, "jpeg": "500 x 375, quality 90 (synthetic noise: slower to "
                                                        "decode than photographs)"}


def recipe(name: str) -> dict:
    return tomllib.loads((ROOT / "train" / "configs" / f"imagenet_{name}.toml").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--gpu-tflops", type=float, default=200.0,
                    help="an ASSUMED sustained bf16 rate for the GPU-hours column (not measured)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    record = {"hardware": f"CPU ({platform.processor() or platform.machine()}, {threads} threads)",
              "torch": torch.__version__, "command": "python bench/imagenet_cost.py " + " ".join(sys.argv[1:]),
              "note": "a shared, noisy machine: CPU times are an order-of-magnitude estimate", "archs": {}}
    cls, mn, oracle = recipe("classifier"), recipe("matchnet"), recipe("oracle")
    for arch in IMAGE_SIZE:
        flops = forward_flops(arch)
        torch.set_num_threads(threads)
        rate = train_rate(arch, args.batch, args.steps)
        cpu_flops = 3 * flops * args.batch / rate["seconds_per_step"]
        images = {"classifier": cls["steps"] * cls["batch"], "matchnet": mn["steps"] * mn["meta_batch"] * mn["way"] * (mn["shot"] + mn["query"]),
                  "oracle": oracle["steps"] * oracle["batch"]}
        total = {k: 3 * flops * v for k, v in images.items()}
        total["evaluation"] = 4 * flops * sum(EVAL_IMAGES.values())  # 3 networks (+ pixels) x every test image
        split = total["classifier"] + total["matchnet"]
        record["archs"][arch] = {
            "forward_gflops_per_image": round(flops / 1e9, 2), "cpu_train_step": rate,
            "cpu_training_gflops_per_second": round(cpu_flops / 1e9, 1), "training_images": images,
            "pflops": {k: round(v / 1e15, 1) for k, v in total.items()},
            "estimate_cpu_core_years_both_splits_and_oracle": round(
                (2 * split + total["oracle"] + total["evaluation"]) / cpu_flops / 3600 / 24 / 365 * threads, 1),
            f"estimate_gpu_hours_at_assumed_{args.gpu_tflops:g}_tflops": {
                "one_split": round(split / (args.gpu_tflops * 1e12) / 3600, 1),
                "oracle": round(total["oracle"] / (args.gpu_tflops * 1e12) / 3600, 1),
                "evaluation_both_splits": round(total["evaluation"] / (args.gpu_tflops * 1e12) / 3600, 2)},
        }
        print(arch, json.dumps(record["archs"][arch]), flush=True)
    record["decode"] = decode_rate()
    print(json.dumps(record["decode"]))
    if args.out:
        write_text(args.out, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
