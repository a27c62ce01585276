#!/usr/bin/env python
"""Training speed on natural images, miniImageNet-shaped: a conventional pipeline against matchnet's fast path,
in one run, on one device; 5-way 1-shot episodes with 15 queries per class (80 images of 3 x 84 x 84).

(a) conventional, as peer implementations do it: a torch DataLoader over the JPEG files (PIL decode, RGB,
    resize to 84 x 84, to tensor, per-channel normalisation, all in __getitem__) driven by an episode batch
    sampler, one episode per step, fp32, a host sync (.item()) per step for logging.
(b) fast: the images decoded once (matchnet.data.image_cache: parallel processes, a cached uint8 tensor), held on the
    device; episodes gathered there with torch ops (matchnet.episodes); several episodes per step; bf16 autocast
    and channels_last on CUDA; the very step matchnet.train uses (make_step). The one-time decode and the later
    cache load are timed separately.

No natural images exist on the project's machines, so by default the data is synthetic (matchnet.data.synthetic)
with real miniImageNet's file shape: JPEGs of 500 x 375 pixels, decoded and resized to 84 x 84. --data-root DIR
uses a real miniImageNet instead (either layout).

  python bench/train_speed.py --dataset miniimagenet --device cpu --out docs/bench/train_speed_images_cpu.json
  python bench/speed_images.py --device cuda --meta-batch 1,32 --out docs/bench/train_speed_images_cuda.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from matchnet.data import load_splits  # noqa: E402
from matchnet.data.miniimagenet import miniimagenet_layout  # noqa: E402
from matchnet.data.synthetic import write_synthetic  # noqa: E402
from matchnet.episodes import Episodes  # noqa: E402
from matchnet.train import TrainConfig, build, episode_loss, make_step, resolve_device  # noqa: E402

WAY, SHOT, QUERY = 5, 1, 15
SIZE = 84


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class JpegDataset(torch.utils.data.Dataset):
    """One JPEG file per item, decoded and transformed in __getitem__ (the conventional way)."""

    def __init__(self, files: list[list[Path]], mean: tuple, std: tuple):
        self.files = files
        self.per_class = min(len(f) for f in files)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files) * self.per_class

    def __getitem__(self, i: int):
        from PIL import Image

        c, d = divmod(i, self.per_class)
        with Image.open(self.files[c][d]) as img:
            x = img.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(x, dtype=np.float32) / 255).permute(2, 0, 1)
        return (x - self.mean) / self.std, c


class EpisodeBatchSampler(torch.utils.data.Sampler):
    """The dataset indices of one episode per batch: N classes, k + q images each, class by class."""

    def __init__(self, num_classes: int, per_class: int, episodes: int, seed: int):
        self.num_classes, self.per_class, self.episodes, self.seed = num_classes, per_class, episodes, seed

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for _ in range(self.episodes):
            classes = rng.choice(self.num_classes, WAY, replace=False)
            yield [c * self.per_class + d for c in classes for d in rng.choice(self.per_class, SHOT + QUERY,
                                                                                replace=False)]


def windows_rate(step, per_step: int, warmup: int, windows: int, window_steps: int,
                 device: torch.device) -> tuple[float, list[float]]:
    """Episodes/s: the median over timed windows after `warmup` steps."""
    for _ in range(warmup):
        step()
    sync(device)
    rates = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(window_steps):
            step()
        sync(device)
        rates.append(per_step * window_steps / (time.perf_counter() - t))
    return statistics.median(rates), rates


def conventional(files, splits, cfg: TrainConfig, device, workers: int, warmup: int, windows: int,
                 window_steps: int) -> dict:
    torch.manual_seed(cfg.seed)
    model = TrainConfig.model(cfg, splits["train"]).to(device).train()
    model.input_mean = model.input_std = None  # this pipeline normalises in the dataset, as peer code does
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    total = warmup + windows * window_steps
    loader = torch.utils.data.DataLoader(
        JpegDataset(files, splits["train"].mean, splits["train"].std),
        batch_sampler=EpisodeBatchSampler(len(files), min(len(f) for f in files), total, cfg.seed),
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    batches = iter(loader)
    labels = torch.arange(WAY, device=device).view(1, WAY, 1).expand(1, WAY, SHOT + QUERY)

    def step():
        x, _ = next(batches)
        x = x.to(device, non_blocking=True).view(1, WAY, SHOT + QUERY, 3, SIZE, SIZE)
        ep = Episodes(x[:, :, :SHOT].flatten(1, 2), labels[:, :, :SHOT].flatten(1), x[:, :, SHOT:].flatten(1, 2),
                      labels[:, :, SHOT:].flatten(1), torch.zeros(1, WAY, dtype=torch.long), WAY)
        loss, _ = episode_loss(model, ep, amp=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # the per-step host sync of a logging loop

    median, rates = windows_rate(step, 1, warmup, windows, window_steps, device)
    return {"pipeline": "conventional: DataLoader over JPEG files, PIL decode + resize, 1 episode/step, fp32",
            "dataloader_workers": workers, "episodes_per_s": round(median, 3), "window_rates": rates,
            "images_per_s": round(median * WAY * (SHOT + QUERY), 1)}


def fast(splits, cfg: TrainConfig, device, warmup: int, windows: int, window_steps: int) -> dict:
    train_split = splits["train"].to(device)
    model, opt, sampler = build(cfg, train_split, device)
    step_fn = make_step(model, opt, sampler, cfg)
    model.train()
    median, rates = windows_rate(lambda: step_fn(cfg.lr), cfg.meta_batch, warmup, windows, window_steps, device)
    return {"pipeline": f"fast: cached uint8 tensor on the device, episodes gathered there, {cfg.meta_batch} "
                        f"episodes/step, {'bf16 + channels_last' if cfg.amp else 'fp32'}",
            "meta_batch": cfg.meta_batch, "amp_bf16": cfg.amp, "channels_last": cfg.channels_last,
            "episodes_per_s": round(median, 3), "window_rates": rates,
            "images_per_s": round(median * WAY * (SHOT + QUERY), 1)}


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="miniimagenet", choices=["miniimagenet"])
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", help="a real miniImageNet (default: a synthetic one in a temporary folder)")
    p.add_argument("--classes", type=int, default=20, help="synthetic classes (default 20)")
    p.add_argument("--per-class", type=int, default=40, help="synthetic images per class (default 40)")
    p.add_argument("--jpeg", default="500x375", help="synthetic JPEG size, WxH (real miniImageNet's typical size)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    p.add_argument("--meta-batch", default="", help="fast path episodes per step, one row each (default: 1,32 "
                                                    "on CUDA, 1,4 on a CPU)")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--window-steps", type=int, default=0, help="steps per timed window (default: 20 CUDA, 2 CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="bench/train_speed_images.json")
    args_ = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(args_)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    meta_batches = [int(v) for v in (args.meta_batch or ("1,32" if cuda else "1,4")).split(",")]
    window_steps = args.window_steps or (20 if cuda else 2)
    warmup = 5 if cuda else 1
    load_before = os.getloadavg()
    tmp = None
    if args.data_root:
        root = Path(args.data_root)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="matchnet-speed-images-")
        root = Path(tmp.name)
        w, h = (int(v) for v in args.jpeg.split("x"))
        t = time.perf_counter()
        write_synthetic(root, "csv", classes=args.classes, per_class=args.per_class, width=w, height=h)
        print(f"wrote {args.classes} x {args.per_class} synthetic {w}x{h} JPEGs in {time.perf_counter() - t:.1f} s",
              flush=True)
    t = time.perf_counter()
    splits = load_splits("miniimagenet", "ravi", str(root), image_size=SIZE)
    decode_s = time.perf_counter() - t
    t = time.perf_counter()
    splits = load_splits("miniimagenet", "ravi", str(root), image_size=SIZE)
    cache_s = time.perf_counter() - t
    _, parts = miniimagenet_layout(root)
    files = list(parts["train"].values())
    n_files = sum(len(f) for p in parts.values() for f in p.values())
    print(f"decoded {n_files} files in {decode_s:.1f} s (once); cache load {cache_s:.2f} s", flush=True)

    base = dict(name="speed-images", dataset="miniimagenet", split="ravi", way=WAY, shot=SHOT, query=QUERY,
                device=device.type, progress=False)
    conv_cfg = TrainConfig.from_dict({**base, "meta_batch": 1})
    rows = []
    print("conventional ...", flush=True)
    rows.append(conventional(files, splits, conv_cfg, device, args.workers, warmup, args.windows, window_steps))
    print(json.dumps(rows[-1]), flush=True)
    for meta_batch in meta_batches:
        print(f"fast, {meta_batch} episodes per step ...", flush=True)
        fast_cfg = TrainConfig.from_dict({**base, "meta_batch": meta_batch, "amp": cuda, "channels_last": cuda})
        rows.append(fast(splits, fast_cfg, device, warmup, args.windows, window_steps))
        print(json.dumps(rows[-1]), flush=True)
    record = {
        "command": "python bench/train_speed.py " + " ".join(["--dataset", "miniimagenet"] * ("--dataset" not in args_)
                                                             + args_),
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({cpu_name()})",
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "data": ("synthetic (matchnet.data.synthetic), "
                 f"{args.classes} classes x {args.per_class} JPEGs of {args.jpeg}" if tmp else f"{root}"),
        "episode": f"{WAY}-way {SHOT}-shot, {QUERY} queries per class, {WAY * (SHOT + QUERY)} images of 3x84x84",
        "model": "Conv-4, 64 channels, 1600-d, no FCE",
        "one_time_decode_s": round(decode_s, 2), "cache_load_s": round(cache_s, 3), "files": n_files,
        "warmup_steps": warmup, "windows": args.windows, "window_steps": window_steps,
        "rows": rows,
        "speedup_vs_conventional": {f"meta_batch {r['meta_batch']}": round(r["episodes_per_s"]
                                                                          / rows[0]["episodes_per_s"], 2)
                                    for r in rows[1:]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"speed-up {record['speedup_vs_conventional']}; wrote {out}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
