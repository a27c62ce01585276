#!/usr/bin/env python
"""Training speed, one change at a time, and time to accuracy, on one device in one run.

Throughput rows (each changes ONE thing against the row above it; all on 5-way 1-shot, 15 queries per class):
  1. conventional: a torch DataLoader over per-image PIL samples (rotation and ToTensor per image in
     __getitem__), an episode batch sampler, 1 episode per step, fp32
  2. + data pipeline: the dataset as one uint8 tensor on the device, episodes gathered and rotated there
     (matchnet.episodes); still 1 episode per step, fp32
  3. + episodes per step: --meta-batch episodes per step (default 128), fp32
  4. + bf16 autocast and channels_last (CUDA only: matchnet.train turns them off on a CPU)
  5. + torch.compile (with --compile; CUDA only here)
Then the shipped recipe (60-way 1-shot, 5 queries, 8 episodes per step) through
  6. the conventional pipeline, fp32          7. the fast path, fp32 (like for like with 6)
  8. the fast path as shipped: bf16 + channels_last (CUDA only)
Neither loop syncs with the host per step; each timing window ends with one device sync. Every row is the
median of timed windows after warm-up steps, in the same process: compare rows of the same run only.

Accuracy parity: the same config and episode count through rows 1 and 2, tested on the same episodes.

Time to accuracy (--tta-only, or after the rows): matchnet.train itself with the shipped recipe cut to each
of --tta-steps. The step count is CHOSEN ON VALIDATION (the shortest whose best model reaches the paper's
98.1 on 5-way and 93.8 on 20-way 1-shot on 1,000 validation episodes per column; else the best on
validation), and only that model is tested, on the test episodes of `train/run.py eval` and RESULTS.md
(matchnet.evaluate.evaluate_table: column i uses seed + 1000*i). --fresh-shell then runs the chosen step
count as a user would, `train/run.py train` then `train/run.py eval` in new processes, and writes a
timestamped log (with /usr/bin/time -v when present) from process start to the checkpoint written.

  python bench/train_speed.py --device cuda --data-root data --compile --out docs/bench/speed_<gpu>.json
  python bench/train_speed.py --device cuda --data-root data --tta-only --tta-steps 1000,1500,2000,2500 \\
      --fresh-shell --out docs/bench/tta_<gpu>.json
  python bench/train_speed.py --device cpu --data-root data --quick --workers 1 --meta-batch 8   # a CPU
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from matchnet.data import load_splits  # noqa: E402
from matchnet.episodes import Episodes  # noqa: E402
from matchnet.evaluate import TEST_QUERY, evaluate_table  # noqa: E402
from matchnet.train import (TrainConfig, build, episode_loss, eval_batch, make_step, resolve_device,  # noqa: E402
                            train)

SHIPPED_TOML = ROOT / "train" / "configs" / "omniglot_vinyals.toml"
# Conv-4 on 1x28x28: 2 x MACs of the four 3x3 convolutions (28², 14², 7², 3² outputs of 64 channels).
FWD_FLOP = 2 * 9 * 64 * (1 * 28 * 28 + 64 * 14 * 14 + 64 * 7 * 7 + 64 * 3 * 3)
TRAIN_FLOP = 3 * FWD_FLOP  # forward + backward (about twice the forward)
PAPER_TARGETS = {"5w1s": 98.1, "20w1s": 93.8}  # the paper's Table 1, Matching Nets without fine-tuning
# Each row changes one thing against this row (the row above it, except the shipped recipe's own baseline 6).
COMPARED_WITH = {2: 1, 3: 2, 4: 3, 5: 4, 7: 6, 8: 7}
VAL_SEED = 12345  # validation episodes (val classes); matchnet.train.validate uses the same seed


@dataclass(frozen=True)
class Shape:
    way: int
    shot: int
    query: int
    episodes: int  # per step

    @property
    def images(self) -> int:
        return self.episodes * self.way * (self.shot + self.query)

    def __str__(self) -> str:
        return f"{self.way}-way {self.shot}-shot, {self.query} queries/class, {self.episodes} episode(s)/step"


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
    """Yields the dataset indices of one step's episodes per batch: per episode N classes, k + q drawings
    each, class-major."""

    def __init__(self, num_classes: int, per_class: int, shape: Shape, steps: int, seed: int):
        self.num_classes, self.per_class, self.shape, self.steps, self.seed = (num_classes, per_class, shape,
                                                                               steps, seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        rng, s = np.random.default_rng(self.seed), self.shape
        for _ in range(self.steps):
            batch = []
            for _ in range(s.episodes):
                for c in rng.choice(self.num_classes, s.way, replace=False):
                    batch += [c * self.per_class + d for d in rng.choice(self.per_class, s.shot + s.query,
                                                                         replace=False)]
            yield batch


def to_episodes(images: torch.Tensor, shape: Shape, device: torch.device) -> Episodes:
    s = shape
    x = images.to(device, non_blocking=True).view(s.episodes, s.way, s.shot + s.query, 1, 28, 28)
    labels = torch.arange(s.way, device=device).view(1, s.way, 1).expand(s.episodes, s.way, s.shot + s.query)
    return Episodes(x[:, :, :s.shot].flatten(1, 2), labels[:, :, :s.shot].flatten(1), x[:, :, s.shot:].flatten(1, 2),
                    labels[:, :, s.shot:].flatten(1), torch.zeros(s.episodes, s.way, dtype=torch.long), s.way)


def conventional_step(split, cfg: TrainConfig, shape: Shape, device, steps: int, workers: int):
    """(model, step(lr)): each call trains on the next DataLoader batch; fp32, no host sync."""
    torch.manual_seed(cfg.seed)
    model = cfg.model().to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loader = torch.utils.data.DataLoader(
        PerImageDataset(split), num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        batch_sampler=EpisodeBatchSampler(split.num_classes, split.per_class, shape, steps, cfg.seed))
    batches = iter(loader)

    def step(lr: float):
        images, _ = next(batches)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, _ = episode_loss(model, to_episodes(images, shape, device), amp=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, step


# ---------------------------------------------------------------- (b) the fast path
def fast_config(device, shape: Shape, amp: bool, compile_: bool = False, steps: int = 1000) -> TrainConfig:
    on_gpu = device.type == "cuda"
    return TrainConfig(way=shape.way, shot=shape.shot, query=shape.query, meta_batch=shape.episodes,
                       amp=amp and on_gpu, channels_last=amp and on_gpu, compile=compile_, steps=steps,
                       device=device.type, progress=False)


def throughput(step, device, warmup: int, windows: int, window_steps: int, shape: Shape) -> dict:
    for _ in range(warmup):
        step(1e-3)
    sync(device)
    rates = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(window_steps):
            step(1e-3)
        sync(device)
        rates.append(window_steps * shape.episodes / (time.perf_counter() - t))
    return {"episodes_per_s": statistics.median(rates), "spread": [min(rates), max(rates)],
            "timing": f"median of {windows} windows of {window_steps} steps after {warmup} warm-up steps"}


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS so far


def reset_memory(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def table_accuracy(model, split, episodes: int, seed: int, columns) -> dict:
    """evaluate_table: the episodes of `train/run.py eval` (column i: seed + 1000*i), in eval mode."""
    if hasattr(model, "use_channels_last"):  # as train/run.py eval: NHWC, the same fp32 arithmetic
        model.use_channels_last()
    accs = evaluate_table(model, split, episodes=episodes, seed=seed, columns=columns, progress=False,
                          batch=eval_batch(split.images.device))
    return {f"{a.way}w{a.shot}s": {"mean": round(a.mean, 2), "ci95": round(a.ci95, 2), "seed": a.seed}
            for a in accs}


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------- time to accuracy
BEST_VAL_RULE = ("the best 20w1s (then 5w1s) on validation among the step counts tried, each sized to fit the "
                 "10-minute budget from a fresh shell; the chosen model is tested (a second look when first_look "
                 "holds an earlier rule's test)")


def time_to_accuracy(args, device, splits, report: dict, save) -> None:
    q = args.quick
    runs = []
    for steps in [int(x) for x in str(args.tta_steps).split(",")]:
        cfg = TrainConfig.from_toml(SHIPPED_TOML, device=device.type, steps=steps, data_root=args.data_root,
                                    out_dir=tempfile.mkdtemp(prefix="matchnet_tta_"), progress=False,
                                    val_every=steps if q else args.tta_val_every or 250,
                                    val_episodes=20 if q else args.tta_val_episodes or 300,
                                    log_every=max(1, steps // 3) if q else 250, checkpoint_every=10 ** 6)
        if q:  # CPU smoke test of the code path: a tiny meta-batch
            cfg = replace(cfg, meta_batch=2)
        summary = train(cfg, resume=False)  # loads the (cached) dataset itself: start-up counts in the time
        log = [json.loads(x) for x in (cfg.run_dir / "log.jsonl").read_text().splitlines()]

        def first(key, target):
            hits = [r["time"] for r in log if r.get(key, 0) >= target]
            return round(hits[0], 1) if hits else None

        from matchnet.checkpoint import load_model

        best = load_model(cfg.run_dir / "best", device)
        run = {"steps": steps, "meta_batch": cfg.meta_batch, "train_s": round(summary["seconds"], 1),
               "own_val_5w1s_98.1_at_s": first("val_5w1s", 98.1), "own_val_20w1s_93.8_at_s": first("val_20w1s", 93.8),
               "val_episodes": args.val_episodes,
               "val": table_accuracy(best, splits["val"].to(device), args.val_episodes, VAL_SEED, ((5, 1), (20, 1))),
               "run_dir": str(cfg.run_dir)}
        runs.append(run)
        print(json.dumps(run), flush=True)
    # choose on validation only: the shortest run at the paper's numbers there, else the best there
    reached = [r for r in runs if all(r["val"][k]["mean"] >= t for k, t in PAPER_TARGETS.items())]
    chosen = min(reached, key=lambda r: r["steps"]) if reached else max(runs, key=lambda r: r["val"]["20w1s"]["mean"])
    from matchnet.checkpoint import load_model

    test = table_accuracy(load_model(Path(chosen["run_dir"]) / "best", device), splits["test"].to(device),
                          args.test_episodes, 0, ((5, 1), (5, 5), (20, 1), (20, 5)))
    report["time_to_accuracy"] = {
        "recipe": f"{SHIPPED_TOML.relative_to(ROOT)} with steps = each of --tta-steps"
                  + (" (quick: meta_batch 2)" if q else ""),
        "rule": "the shortest step count whose best-on-validation model reaches 98.1 (5w1s) and 93.8 (20w1s) "
                "on validation; else the best 20w1s on validation. Only the chosen model is tested.",
        "runs": [{k: v for k, v in r.items() if k != "run_dir"} for r in runs],
        "chosen_steps": chosen["steps"], "chosen_because": "reached the targets on validation" if reached
        else "no run reached the targets on validation: the best on validation",
        "test_episodes": args.test_episodes, "test_seed": 0, "test": test}
    print(json.dumps({"chosen_steps": chosen["steps"], "test": test}), flush=True)
    save()
    for r in runs:
        shutil.rmtree(r["run_dir"], ignore_errors=True)
    if args.fresh_shell:
        report["time_to_accuracy"]["fresh_shell"] = fresh_shell(args, device, chosen["steps"], report)
        save()


def fresh_shell(args, device, steps: int, report: dict) -> dict:
    """`train/run.py train` then `eval`, each in a new process, as a user types them; every output line is
    logged with its time since the train process was started. The training time is the train process's
    wall time: from exec to the last checkpoint (final/) written and the process exited."""
    out = Path(tempfile.mkdtemp(prefix="matchnet_fresh_"))
    log_path = Path(args.fresh_log)
    train_cmd = [sys.executable, "train/run.py", "train", "--config", str(SHIPPED_TOML.relative_to(ROOT)),
                 "--device", device.type, "--data-root", args.data_root, "--set", f"steps={steps}",
                 "--set", f"out_dir={out / 'run'}", "--set", "progress=false", "--restart"]
    if args.quick:  # the code path only: a tiny meta-batch, validation once
        train_cmd += ["--set", "meta_batch=2", "--set", f"val_every={steps}", "--set", "val_episodes=20"]
    eval_cmd = [sys.executable, "train/run.py", "eval", "--checkpoint", str(out / "run" / "best"), "--device",
                device.type, "--data-root", args.data_root, "--episodes", str(args.test_episodes), "--seed", "0", "--out", str(out / "results.json")]
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").is_file() else []
    record: dict = {"train_command": " ".join(train_cmd[1:]), "eval_command": " ".join(eval_cmd[1:]),
                    "log": str(log_path)}
    with log_path.open("w") as log:
        def run(cmd: list[str], what: str) -> float:
            start_wall, t0 = datetime.datetime.now().astimezone(), time.perf_counter()
            log.write(f"# {start_wall.isoformat(timespec='milliseconds')} start {what}: {' '.join(timer + cmd)}\n")
            proc = subprocess.Popen(timer + cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            for line in proc.stdout:
                log.write(f"[{time.perf_counter() - t0:8.2f} s] {line}")
                log.flush()  # the log is readable while the run goes on
            code = proc.wait()
            elapsed = time.perf_counter() - t0
            end_wall = datetime.datetime.now().astimezone()
            log.write(f"# {end_wall.isoformat(timespec='milliseconds')} end {what}: exit {code}, "
                      f"{elapsed:.2f} s from process start\n")
            log.flush()
            if code:
                raise SystemExit(f"{what} failed (exit {code}); see {log_path}")
            return elapsed
        record["train_process_s"] = round(run(train_cmd, "train"), 2)
        record["checkpoint_written"] = (out / "run" / "final").is_dir() and (out / "run" / "best").is_dir()
        record["eval_process_s"] = round(run(eval_cmd, "eval"), 2)
    results = json.loads((out / "results.json").read_text())
    record["test"] = {k: {"mean": round(v["mean"], 2), "ci95": round(v["ci95"], 2)}
                      for k, v in results["accuracy"].items()}
    record["test_episodes"], record["test_seed"] = results["episodes"], results["seed"]
    training = out / "run" / "run.json"
    if training.is_file():
        record["train_seconds_inside_train"] = json.loads(training.read_text()).get("seconds")
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(record), flush=True)
    return record


def main() -> None:
    argv = sys.argv[1:]
    if "--dataset=miniimagenet" in argv or any(a == "--dataset" and b == "miniimagenet" for a, b in zip(argv, argv[1:])):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import speed_images  # natural images (3x84x84 from JPEG files): bench/speed_images.py, its own options

        return speed_images.main(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default="data")
    p.add_argument("--quick", action="store_true", help="CPU-sized: fewer steps and episodes everywhere")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers for the conventional pipeline")
    p.add_argument("--meta-batch", type=int, default=128, help="episodes per step of rows 3-5")
    p.add_argument("--compile", action="store_true", help="row 5: torch.compile (CUDA)")
    p.add_argument("--no-parity", action="store_true", help="skip the accuracy-parity runs")
    p.add_argument("--tta-steps", default="1000,1500,2000,2500", help="step counts of the time-to-accuracy runs")
    p.add_argument("--tta-val-every", type=int, default=0,
                   help="training-time validation cadence of the time-to-accuracy runs (0: every 250 steps)")
    p.add_argument("--tta-val-episodes", type=int, default=0,
                   help="episodes per training-time validation of those runs (0: 300)")
    p.add_argument("--tta-only", action="store_true", help="only time to accuracy: no throughput rows, no parity")
    p.add_argument("--no-tta", action="store_true", help="no time-to-accuracy runs")
    p.add_argument("--fresh-shell", action="store_true",
                   help="also run the chosen step count as `train/run.py train` + `eval` in new processes")
    p.add_argument("--fresh-log", default="bench/tta_fresh_shell.log", help="the fresh-shell run's timestamped log")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--fresh-only", type=int, default=0, metavar="STEPS",
                   help="only the fresh-shell run, at STEPS already chosen on validation (recorded in --out, "
                        "which must hold that time_to_accuracy): re-times it on a quiet machine")
    p.add_argument("--runs-from", default="", metavar="JSON",
                   help="with --fresh-only: the record holding the validation runs (default: --out)")
    p.add_argument("--rule", choices=("shortest-at-target", "best-val"), default="shortest-at-target",
                   help="with --fresh-only: best-val re-chooses the step count from those runs by validation alone")
    p.add_argument("--out", default="bench/train_speed.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    if args.fresh_only:
        report = json.loads(Path(args.runs_from or args.out).read_text())
        tta = report["time_to_accuracy"]
        if args.rule == "best-val":  # re-choose from the recorded validation runs; the test is looked at again
            first = {k: tta.pop(k) for k in ("rule", "chosen_steps", "chosen_because", "test", "fresh_shell") if k in tta}
            best = max(tta["runs"], key=lambda r: (r["val"]["20w1s"]["mean"], r["val"]["5w1s"]["mean"]))
            tta.update(rule=BEST_VAL_RULE, chosen_steps=best["steps"], chosen_because="best 20w1s on validation",
                       first_look={"record": args.runs_from or args.out, **first},
                       second_look="the test set was looked at once before, under the first rule (first_look)")
        if tta["chosen_steps"] != args.fresh_only:
            raise SystemExit(f"--fresh-only {args.fresh_only}: {args.out} chose {tta['chosen_steps']} steps")
        args.test_episodes = tta["test_episodes"]
        load = list(os.getloadavg())
        tta["fresh_shell"] = fresh_shell(args, device, args.fresh_only, report)
        tta["fresh_shell"]["load_average_at_start"] = load
        tta.setdefault("test", tta["fresh_shell"]["test"])  # best-val: the fresh-shell eval is the one test
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        return
    start = time.perf_counter()
    q = args.quick
    windows, window_steps, warmup = (3, 3, 1) if q else (5, 30, 10)
    parity_episodes = 300 if q else 3000
    args.test_episodes = 20 if q else 1000
    args.val_episodes = 20 if q else 1000
    splits = load_splits("omniglot", "vinyals", args.data_root)
    train_split, test_split = splits["train"].to(device), splits["test"].to(device)
    peak, peak_what = matmul_peak(device)
    hw = hardware(device)
    report = {"device": hw, "torch": torch.__version__, "command": "python " + " ".join(sys.argv),
              "date": datetime.date.today().isoformat(), "threads": torch.get_num_threads(),
              "load_average_at_start": list(os.getloadavg()), "peak_flops": peak, "peak_measured_with": peak_what,
              "train_flop_per_image": TRAIN_FLOP, "rows": [], "not_measured": []}

    def save() -> None:
        report["wall_s"] = round(time.perf_counter() - start, 1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    def add_row(number: int, change: str, pipeline: str, shape: Shape, rate: dict, t: float) -> None:
        eps = rate["episodes_per_s"]
        row = {"row": number, "vs_row": COMPARED_WITH.get(number), "change": change, "pipeline": pipeline,
               "shape": str(shape),
               "episodes_per_s": round(eps, 3), "images_per_s": round(eps * shape.images / shape.episodes),
               "fraction_of_peak": eps * shape.images / shape.episodes * TRAIN_FLOP / peak,
               "peak_memory_mb": round(peak_memory_mb(device), 1), "seconds_incl_warmup": round(time.perf_counter() - t, 1),
               "spread": [round(x, 1) for x in rate["spread"]], "timing": rate["timing"]}
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        save()

    def timing(shape: Shape) -> tuple[int, int, int]:
        """(warm-up steps, windows, steps per window): --quick times the shipped recipe's big steps one by one."""
        return (1, 3, 1) if q and shape.images > 1000 else (warmup, windows, window_steps)

    def conventional_row(number: int, change: str, shape: Shape) -> None:
        reset_memory(device)
        t = time.perf_counter()
        w, n, k = timing(shape)
        _, step = conventional_step(train_split.to("cpu"), fast_config(device, shape, False), shape, device,
                                    w + n * k, args.workers)
        add_row(number, change, f"conventional (DataLoader, {args.workers} workers), fp32", shape,
                throughput(step, device, w, n, k, shape), t)

    def fast_row(number: int, change: str, shape: Shape, amp: bool, comp: bool = False) -> None:
        cfg = fast_config(device, shape, amp, comp)
        if amp and not cfg.amp:
            report["not_measured"].append({"row": number, "change": change, "why": "bf16 autocast and channels_last "
                                           "are CUDA-only in matchnet.train (a CPU trains in fp32)"})
            return
        model, opt, sampler = build(cfg, train_split, device)
        reset_memory(device)
        t = time.perf_counter()
        extras = ("bf16 + channels_last" if cfg.amp else "fp32") + (", torch.compile" if comp else "")
        w, n, k = timing(shape)
        add_row(number, change, f"fast (device sampler), {extras}", shape,
                throughput(make_step(model, opt, sampler, cfg), device, w, n, k, shape), t)

    if not args.tta_only:
        small, big = Shape(5, 1, 15, 1), Shape(5, 1, 15, args.meta_batch)
        shipped = Shape(60, 1, 5, 8)
        conventional_row(1, "baseline", small)
        fast_row(2, "data pipeline: DataLoader -> device sampler", small, amp=False)
        fast_row(3, f"episodes per step: 1 -> {args.meta_batch}", big, amp=False)
        fast_row(4, "fp32 -> bf16 autocast + channels_last", big, amp=True)
        if args.compile and device.type == "cuda":
            fast_row(5, "+ torch.compile", big, amp=True, comp=True)
        else:
            report["not_measured"].append({"row": 5, "change": "+ torch.compile",
                                           "why": "needs --compile on CUDA" if device.type == "cuda" else
                                           "CUDA only in this benchmark (compiling on a CPU takes minutes)"})
        conventional_row(6, "the shipped recipe, conventional pipeline", shipped)
        fast_row(7, "the shipped recipe, data pipeline: DataLoader -> device sampler (like for like with 6)",
                 shipped, amp=False)
        fast_row(8, "the shipped recipe as shipped: + bf16 autocast + channels_last", shipped, amp=True)

        if not args.no_parity:  # the same config and episode count through rows 1 and 2 (1 episode per step)
            shape = Shape(5, 1, 15, 1)
            cfg = fast_config(device, shape, False, steps=parity_episodes)
            lrs = [cfg.lr * 0.5 * (1 + np.cos(np.pi * i / parity_episodes)) for i in range(parity_episodes)]
            conv_model, step = conventional_step(train_split.to("cpu"), cfg, shape, device, parity_episodes,
                                                 args.workers)
            for lr in lrs:
                step(lr)
            fast_model, opt, sampler = build(cfg, train_split, device)
            fast_model.train()
            step = make_step(fast_model, opt, sampler, cfg)
            for lr in lrs:
                step(lr)
            columns = ((5, 1), (5, 5), (20, 1), (20, 5))
            report["parity"] = {"episodes": parity_episodes, "test_episodes": args.test_episodes, "test_seed": 0,
                                "conventional": table_accuracy(conv_model, test_split, args.test_episodes, 0, columns),
                                "fast": table_accuracy(fast_model, test_split, args.test_episodes, 0, columns)}
            print(json.dumps(report["parity"]), flush=True)
            save()

    if not args.no_tta:
        time_to_accuracy(args, device, splits, report, save)
    save()

    print(f"\n{hw}, torch {torch.__version__}; peak {peak / 1e12:.2f} TFLOP/s ({peak_what})")
    for r in report["rows"]:
        base = next((b for b in report["rows"] if b["row"] == r["vs_row"]), None)
        vs = f"x{r['episodes_per_s'] / base['episodes_per_s']:.2f} vs row {base['row']}" if base else ""
        print(f"{r['row']}. {r['change']:<82} {r['episodes_per_s']:>9.1f} ep/s {r['images_per_s']:>9} img/s  {vs}")
    for r in report["not_measured"]:
        print(f"{r['row']}. {r['change']:<82} not measured: {r['why']}")
    if "time_to_accuracy" in report:
        tta = report["time_to_accuracy"]
        print(f"time to accuracy: chose {tta['chosen_steps']} steps on validation; test {tta['test']}")
    print(f"wall time {report['wall_s']} s; wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "train"))
    from run import _reexec_with_malloc_settings  # the CLI's own start-up: CPU rows as users train

    _reexec_with_malloc_settings()
    main()
