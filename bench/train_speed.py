#!/usr/bin/env python
"""Training speed: a conventional few-shot pipeline against matchnet's fast path, in one run, on one device.

(a) conventional, as peer implementations do it: a torch DataLoader over per-image PIL samples (rotation and
    ToTensor per image in __getitem__) driven by an episode batch sampler, one episode per step, fp32, a
    host sync (.item()) per step for logging.
(b) fast: the whole dataset as one uint8 tensor on the device, episodes gathered and rotated with torch ops
    (matchnet.episodes), several episodes per step (meta-batch), bf16 autocast and channels_last on CUDA,
    no host sync per step: the very step function that matchnet.train uses.

Reports training episodes/s (median of timed windows after warm-up), images/s, the fraction of the device's
measured matrix-multiply peak, peak memory, time to accuracy, and accuracy parity between (a) and (b).

  python bench/train_speed.py --device cuda --data-root data        # a GPU: about 4 minutes
  python bench/train_speed.py --device cpu --data-root data --quick  # a CPU: a few minutes
  python bench/train_speed.py --device cuda --data-root data --tta-only --tta-steps 1000,1500,2000,2500
                                                                     # time to accuracy only: about 90 s
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from matchnet.data import load_splits  # noqa: E402
from matchnet.episodes import Episodes  # noqa: E402
from matchnet.evaluate import evaluate  # noqa: E402
from matchnet.train import TrainConfig, build, episode_loss, make_step, resolve_device, train  # noqa: E402

WAY, SHOT, QUERY = 5, 1, 15
IMAGES = WAY * (SHOT + QUERY)  # 80 per episode
# Conv-4 on 1x28x28: 2 x MACs of the four 3x3 convolutions (28², 14², 7², 3² outputs of 64 channels).
FWD_FLOP = 2 * 9 * 64 * (1 * 28 * 28 + 64 * 14 * 14 + 64 * 7 * 7 + 64 * 3 * 3)
TRAIN_FLOP = 3 * FWD_FLOP  # forward + backward (about twice the forward)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device) -> tuple[float, str]:
    """Measured dense matrix-multiply rate in FLOP/s: bf16 on CUDA, fp32 on the CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t = 20 if device.type == "cuda" else 5, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t), f"{dtype} {n}x{n} matmul"


# ---------------------------------------------------------------- (a) the conventional pipeline
class PerImageDataset(torch.utils.data.Dataset):
    """One PIL image per (class, drawing), rotated and converted in __getitem__, as peer code does."""

    def __init__(self, split):
        from PIL import Image

        self.images = [[Image.fromarray(split.images[s, d].numpy()) for d in range(split.per_class)]
                       for s in range(split.images.shape[0])]
        self.source, self.rotation, self.per_class = split.source.tolist(), split.rotation.tolist(), split.per_class

    def __len__(self) -> int:
        return len(self.source) * self.per_class

    def __getitem__(self, i: int):
        c, d = divmod(i, self.per_class)
        img = self.images[self.source[c]][d].rotate(90 * self.rotation[c])
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).unsqueeze(0), c


class EpisodeBatchSampler(torch.utils.data.Sampler):
    """Yields the dataset indices of one episode per batch: N classes, k + q drawings each, class-major."""

    def __init__(self, num_classes: int, per_class: int, episodes: int, seed: int):
        self.num_classes, self.per_class, self.episodes, self.seed = num_classes, per_class, episodes, seed

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for _ in range(self.episodes):
            classes = rng.choice(self.num_classes, WAY, replace=False)
            yield [c * self.per_class + d for c in classes
                   for d in rng.choice(self.per_class, SHOT + QUERY, replace=False)]


def conventional_loader(split, episodes: int, workers: int, seed: int, device: torch.device):
    ds = PerImageDataset(split)
    return torch.utils.data.DataLoader(ds, batch_sampler=EpisodeBatchSampler(split.num_classes, split.per_class,
                                       episodes, seed), num_workers=workers, pin_memory=device.type == "cuda",
                                       persistent_workers=workers > 0)


def to_episode(images: torch.Tensor, device: torch.device) -> Episodes:
    x = images.to(device, non_blocking=True).view(1, WAY, SHOT + QUERY, 1, 28, 28)
    labels = torch.arange(WAY, device=device).view(1, WAY, 1).expand(1, WAY, SHOT + QUERY)
    return Episodes(x[:, :, :SHOT].flatten(1, 2), labels[:, :, :SHOT].flatten(1), x[:, :, SHOT:].flatten(1, 2),
                    labels[:, :, SHOT:].flatten(1), torch.zeros(1, WAY, dtype=torch.long), WAY)


def conventional_train(split, cfg: TrainConfig, device, episodes: int, workers: int):
    """Train `episodes` episodes the conventional way; returns (model, step times)."""
    torch.manual_seed(cfg.seed)
    model = cfg.model().to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    times, t = [], time.perf_counter()
    for i, (images, _) in enumerate(conventional_loader(split, episodes, workers, cfg.seed, device)):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + np.cos(np.pi * i / episodes))
        loss, _ = episode_loss(model, to_episode(images, device), amp=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # peers log the loss every step: a host sync
        now = time.perf_counter()
        times.append(now - t)
        t = now
    return model, times


# ---------------------------------------------------------------- (b) the fast path
def fast_config(device, meta_batch: int, amp: bool, compile_: bool = False, steps: int = 1000) -> TrainConfig:
    on_gpu = device.type == "cuda"
    return TrainConfig(way=WAY, shot=SHOT, query=QUERY, meta_batch=meta_batch, amp=amp and on_gpu,
                       channels_last=amp and on_gpu, compile=compile_, steps=steps, device=device.type,
                       progress=False)


def throughput(step, device, warmup: int, windows: int, window_steps: int, episodes_per_step: int) -> dict:
    for _ in range(warmup):
        step(1e-3)
    sync(device)
    rates = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(window_steps):
            step(1e-3)
        sync(device)
        rates.append(window_steps * episodes_per_step / (time.perf_counter() - t))
    return {"episodes_per_s": statistics.median(rates), "spread": [min(rates), max(rates)]}


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS


def reset_memory(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def test_accuracy(model, test_split, episodes: int, seed: int = 0) -> dict:
    out = {}
    for way in (5, 20):
        acc = evaluate(model, test_split, way, 1, QUERY, episodes, seed=seed, progress=False)
        out[f"{way}w1s"] = {"mean": round(acc.mean, 2), "ci95": round(acc.ci95, 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default="data")
    p.add_argument("--quick", action="store_true", help="CPU-sized: fewer steps and episodes everywhere")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers for the conventional pipeline")
    p.add_argument("--meta-batches", default="32,64,128", help="fast-path episodes per step to time")
    p.add_argument("--compile", action="store_true", help="also time torch.compile at the largest meta-batch")
    p.add_argument("--tta-steps", default="1500",
                   help="steps of the time-to-accuracy run; a comma list runs one training per value")
    p.add_argument("--tta-only", action="store_true",
                   help="only the time-to-accuracy runs: no throughput rows, no parity")
    p.add_argument("--tta-meta-batch", type=int, default=8, help="the shipped recipe's 8 episodes per step")
    p.add_argument("--out", default="bench/train_speed.json")
    args = p.parse_args()

    device = resolve_device(args.device)
    start = time.perf_counter()
    q = args.quick
    windows, window_steps, warmup = (3, 10, 3) if q else (5, 30, 10)
    parity_episodes = 300 if q else 3000
    test_episodes = 200 if q else 1000
    splits = load_splits("omniglot", "vinyals", args.data_root)
    train_split, test_split = splits["train"].to(device), splits["test"].to(device)
    peak, peak_what = matmul_peak(device)
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    report = {"device": hw, "torch": torch.__version__, "peak_flops": peak, "peak_measured_with": peak_what,
              "train_flop_per_image": TRAIN_FLOP, "shape": f"{WAY}-way {SHOT}-shot, {QUERY} queries/class",
              "rows": []}

    def add_row(name, rate: dict, mem: float):
        eps = rate["episodes_per_s"]
        row = {"pipeline": name, "episodes_per_s": round(eps, 1), "images_per_s": round(eps * IMAGES),
               "fraction_of_peak": eps * IMAGES * TRAIN_FLOP / peak, "peak_memory_mb": round(mem, 1),
               "spread": [round(x, 1) for x in rate["spread"]]}
        report["rows"].append(row)
        print(json.dumps(row), flush=True)

    def save() -> None:
        report["wall_s"] = round(time.perf_counter() - start, 1)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    meta_batches = [int(m) for m in args.meta_batches.split(",")]
    if not args.tta_only:
        # (a) conventional: time windows over one long run, skipping the warm-up steps
        reset_memory(device)
        n = warmup + windows * window_steps
        _, times = conventional_train(train_split.to("cpu"), fast_config(device, 1, False), device, n, args.workers)
        rates = [window_steps / sum(times[warmup + i * window_steps: warmup + (i + 1) * window_steps])
                 for i in range(windows)]
        add_row(f"conventional (DataLoader, {args.workers} workers, 1 episode/step, fp32)",
                {"episodes_per_s": statistics.median(rates), "spread": [min(rates), max(rates)]},
                peak_memory_mb(device))

        # (b) fast path variants
        def time_fast(mb: int, amp: bool, comp: bool) -> None:
            cfg = fast_config(device, mb, amp, comp)
            model, opt, sampler = build(cfg, train_split, device)
            reset_memory(device)
            t = time.perf_counter()
            rate = throughput(make_step(model, opt, sampler, cfg), device, warmup, windows, window_steps, mb)
            extras = ", bf16 + channels_last" if cfg.amp else ", fp32"
            extras += ", torch.compile" if comp else ""
            add_row(f"fast (device sampler, {mb} episode{'s' if mb > 1 else ''}/step{extras})", rate,
                    peak_memory_mb(device))
            report["rows"][-1]["seconds_incl_warmup"] = round(time.perf_counter() - t, 1)
            save()

        for mb, amp in [(1, False)] + [(m, True) for m in meta_batches]:
            time_fast(mb, amp, False)

        # accuracy parity: the same config and number of episodes through both pipelines (1 episode/step)
        cfg = fast_config(device, 1, False, steps=parity_episodes)
        conv_model, _ = conventional_train(train_split.to("cpu"), cfg, device, parity_episodes, args.workers)
        fast_model, opt, sampler = build(cfg, train_split, device)
        fast_model.train()
        step = make_step(fast_model, opt, sampler, cfg)
        for i in range(parity_episodes):
            step(cfg.lr * 0.5 * (1 + np.cos(np.pi * i / parity_episodes)))
        report["parity"] = {"episodes": parity_episodes, "test_episodes": test_episodes,
                            "conventional": test_accuracy(conv_model, test_split, test_episodes),
                            "fast": test_accuracy(fast_model, test_split, test_episodes)}
        print(json.dumps(report["parity"]), flush=True)
        save()

    # time to accuracy: matchnet.train itself (data loading, start-up, validation and checkpoints in the wall time)
    from matchnet.checkpoint import load_model

    report["time_to_accuracy"] = []
    for steps in [int(x) for x in str(args.tta_steps).split(",")]:
        tta_cfg = replace(fast_config(device, 2 if q else args.tta_meta_batch, True, steps=30 if q else steps),
                          way=60, shot=1, query=5, lr=1e-3, warmup_steps=100, val_tasks=[[5, 1], [20, 1]],
                          val_every=10 if q else 250, val_episodes=100 if q else 300, log_every=10 if q else 250,
                          checkpoint_every=10 ** 6, out_dir=tempfile.mkdtemp(prefix="matchnet_tta_"),
                          name="tta", progress=False, data_root=args.data_root)
        summary = train(tta_cfg, resume=False)  # loads the (cached) dataset itself: start-up counts in the time
        log = [json.loads(x) for x in (tta_cfg.run_dir / "log.jsonl").read_text().splitlines()]

        def first(key, target):
            hits = [r["time"] for r in log if r.get(key, 0) >= target]
            return round(hits[0], 1) if hits else None

        best = load_model(tta_cfg.run_dir / "best", device)
        run = {"recipe": "60-way 1-shot, 5 queries, meta-batch %d, lr 1e-3 cosine, scale %g, %d steps"
                         % (tta_cfg.meta_batch, tta_cfg.scale, tta_cfg.steps),
               "val_5w1s_98.1_at_s": first("val_5w1s", 98.1), "val_20w1s_93.8_at_s": first("val_20w1s", 93.8),
               "total_s": round(summary["seconds"], 1), "test_episodes": test_episodes,
               "test": test_accuracy(best, test_split, test_episodes)}
        report["time_to_accuracy"].append(run)
        print(json.dumps(run), flush=True)
        save()
    if args.compile and not args.tta_only:  # last: compilation can take a minute, and everything else is saved
        time_fast(meta_batches[-1], True, True)

    print(f"\n{hw}, torch {torch.__version__}; {report['shape']}; peak {peak / 1e12:.1f} TFLOP/s ({peak_what})")
    if report["rows"]:
        print(f"{'pipeline':<72} {'episodes/s':>10} {'images/s':>10} {'% peak':>7} {'mem MB':>8}")
        base = report["rows"][0]["episodes_per_s"]
        for r in report["rows"]:
            print(f"{r['pipeline']:<72} {r['episodes_per_s']:>10.1f} {r['images_per_s']:>10} "
                  f"{100 * r['fraction_of_peak']:>6.2f}% {r['peak_memory_mb']:>8.0f}  "
                  f"x{r['episodes_per_s'] / base:.1f}")
        par = report["parity"]
        print(f"parity after {par['episodes']} episodes (test, {test_episodes} episodes): conventional "
              f"{par['conventional']}  fast {par['fast']}")
    for tta in report["time_to_accuracy"]:
        print(f"time to accuracy ({tta['recipe']}): val 5w1s>=98.1 at {tta['val_5w1s_98.1_at_s']} s, val "
              f"20w1s>=93.8 at {tta['val_20w1s_93.8_at_s']} s; total {tta['total_s']} s; test {tta['test']}")
    print(f"wall time {report['wall_s']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
