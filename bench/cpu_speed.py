#!/usr/bin/env python
"""CPU training speed, one change per row, with a peer (easyfsl's MatchingNetworks) measured in the same run.

Every row runs in a fresh process (glibc reads the MALLOC_* settings once, at start) with an explicit environment
and thread counts, one row at a time, and times the project's real training step (matchnet.train.build +
make_step: the episode sampler drawing from the Omniglot vinyals train split). Each row compares with one earlier
row and changes one setting against it (or one named bundle: `fast_path` = malloc settings + channels_last +
bf16, for the recipe rows' like-for-like twins); check_chain enforces it. Rows: median of timed windows after
warm-up; images/s x TRAIN_FLOP (Conv-4 forward + backward only, FCE's LSTMs not counted) / the fp32 and bf16
matmul peaks measured in the same run.

  python bench/cpu_speed.py --data-root ../shared/data --out docs/bench/cpu_speed.json   # quiet machine
  python bench/cpu_speed.py --quick --out /tmp/cpu_speed_quick.json                      # smoke check
  python bench/cpu_speed.py --markdown docs/bench/cpu_speed.json                         # the BENCHMARKS table
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from matchnet.cpu import MALLOC_SETTINGS  # noqa: E402  (imports no torch)

BASE = dict(impl="matchnet", threads=1, interop=None, malloc=False, channels_last=False, bf16=False,
            compile=False, fce=False, way=5, shot=1, query=15, episodes=1)
BUNDLES = {"fast_path": ("malloc", "channels_last", "bf16")}  # the CPU fast path of matchnet.train as one change
FAST = dict(malloc=True, channels_last=True, bf16=True)


def rows_table(recipe: tuple[int, int, int, int]) -> list[dict]:
    """The rows: name, settings, compared_with (None: a baseline), change (a setting or a BUNDLES name)."""
    def row(name, compared_with, change, **settings):
        return dict(name=name, compared_with=compared_with, change=change, settings={**BASE, **settings})
    r3 = dict(threads=2, interop=1)
    r6 = dict(r3, **FAST)
    rw, rs, rq, re = recipe
    shapes = {"recipe": dict(way=rw, shot=rs, query=rq, episodes=re), "old-recipe": dict(way=60, shot=1, query=5,
                                                                                           episodes=8)}
    out = [row("r1", None, None),
           row("r2", "r1", "threads", threads=2),
           row("r3", "r2", "interop", **r3),
           row("r4", "r3", "malloc", **r3, malloc=True),
           row("r5", "r4", "channels_last", **r3, malloc=True, channels_last=True),
           row("r6", "r5", "bf16", **r6),
           row("r7", "r6", "compile", **r6, compile=True),
           row("r8", "r6", "episodes", **r6, episodes=4),
           row("r6+fce", "r6", "fce", **r6, fce=True)]
    for name, shape in shapes.items():
        out += [row(f"{name}-fp32", None, None, **r3, **shape), row(name, f"{name}-fp32", "fast_path", **r6, **shape)]
        if name == "recipe":
            out += [row(f"{name}+fce-fp32", None, None, **r3, **shape, fce=True),
                    row(f"{name}+fce", f"{name}+fce-fp32", "fast_path", **r6, **shape, fce=True)]
    # the peer as a user runs it: torch's default threads (2 here), fp32, NCHW, glibc's malloc; easyfsl always has FCE
    peer = dict(impl="easyfsl", threads=2, fce=True)
    out += [row("peer", None, None, **peer), row("peer+malloc", "peer", "malloc", **peer, malloc=True)]
    return out


def check_chain(rows: list[dict]) -> None:
    """Each row's compared row comes earlier and differs from it in exactly its declared change."""
    seen = {}
    for r in rows:
        if r["name"] in seen:
            raise ValueError(f"row {r['name']}: name used twice")
        if set(r["settings"]) != set(BASE):
            raise ValueError(f"row {r['name']}: settings must have exactly the keys {sorted(BASE)}")
        if r["compared_with"] is not None:
            if r["compared_with"] not in seen:
                raise ValueError(f"row {r['name']}: compared row {r['compared_with']!r} is not an earlier row")
            other = seen[r["compared_with"]]["settings"]
            diff = {k for k in BASE if r["settings"][k] != other[k]}
            want = set(BUNDLES.get(r["change"], (r["change"],)))
            if diff != want:
                raise ValueError(f"row {r['name']} vs {r['compared_with']}: changes {sorted(diff)}, declared "
                                 f"{r['change']!r} ({sorted(want)})")
        seen[r["name"]] = r


def describe(r: dict, rows: list[dict]) -> str:
    if r["compared_with"] is None:
        s = r["settings"]
        return (f"baseline: {s['impl']}, {s['threads']} threads, {'bf16' if s['bf16'] else 'fp32'}, "
                f"{'malloc tuned' if s['malloc'] else 'default malloc'}" + (", FCE" if s["fce"] else ""))
    old = next(x for x in rows if x["name"] == r["compared_with"])["settings"]
    keys = BUNDLES.get(r["change"], (r["change"],))
    return "; ".join(f"{k} {old[k]} -> {r['settings'][k]}" for k in keys)


# ---------------------------------------------------------------- worker side (a fresh process per row)
def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    if spec.get("interop") is not None:
        torch.set_num_interop_threads(spec["interop"])
    from matchnet.cpu import native_bf16

    info = {"intra_op_threads": torch.get_num_threads(), "inter_op_threads": torch.get_num_interop_threads(),
            "bf16_native": native_bf16(), "torch": torch.__version__}
    if spec["kind"] == "peak":
        return {**info, **{dt: matmul_rate(getattr(torch, dt), spec["quick"]) for dt in ("float32", "bfloat16")}}
    from matchnet.data import load_splits
    from matchnet.train import TrainConfig, build, make_step

    s, device = spec["settings"], torch.device("cpu")
    split = load_splits("omniglot", "vinyals", spec["data_root"])["train"]
    cfg = TrainConfig(way=s["way"], shot=s["shot"], query=s["query"], meta_batch=s["episodes"], fce=s["fce"],
                      amp=s["bf16"], channels_last=s["channels_last"], compile=s["compile"], device="cpu",
                      progress=False)
    model, opt, sampler = build(cfg, split, device)
    model.train()
    step = make_step(model, opt, sampler, cfg) if s["impl"] == "matchnet" else peer_step(sampler, cfg)
    first = time.perf_counter()
    step(cfg.lr)
    first = time.perf_counter() - first
    rates = throughput(step, cfg.lr, spec["timing"])
    import resource  # the row process's peak resident memory: what the malloc settings cost in RAM

    return {**info, "first_step_s": first, **rates,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def matmul_rate(dtype, quick: bool) -> float:
    import torch

    n, reps = 2048, 3 if quick else 10
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    rates = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        rates.append(2 * n ** 3 * reps / (time.perf_counter() - t))
    return max(rates)  # a peak: the best of three windows


def peer_step(sampler, cfg):
    """easyfsl 1.5.0's MatchingNetworks trained as its docs show (process_support_set, model(query), NLLLoss on
    its log-probabilities, Adam) on a Conv-4 identical to ours. Its episodes are drawn by our sampler before
    timing (a pool, cycled): its time is model + step only, no data loading."""
    import torch
    from easyfsl.methods import MatchingNetworks
    from torch import nn

    from matchnet.model import conv_block

    torch.manual_seed(cfg.seed)
    backbone = nn.Sequential(*[conv_block(1 if i == 0 else 64, 64) for i in range(4)], nn.Flatten())
    model = MatchingNetworks(backbone, feature_dimension=64).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    pool = [sampler.sample(1) for _ in range(32)]
    state = {"i": 0}

    def step(lr: float):
        ep = pool[state["i"] % len(pool)]
        state["i"] += 1
        model.process_support_set(ep.support[0], ep.support_labels[0])
        loss = nn.functional.nll_loss(model(ep.query[0]), ep.query_labels[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def throughput(step, lr: float, timing: dict) -> dict:
    """Warm-up for at least warmup_s (and warmup_steps), then windows of at least window_s each."""
    t0, n = time.perf_counter(), 0
    while n < timing["warmup_steps"] or time.perf_counter() - t0 < timing["warmup_s"]:
        step(lr)
        n += 1
    warm = time.perf_counter() - t0
    rates = []
    for _ in range(timing["windows"]):
        t, k = time.perf_counter(), 0
        while k < 1 or time.perf_counter() - t < timing["window_s"]:
            step(lr)
            k += 1
        rates.append(k / (time.perf_counter() - t))
    return {"warmup_steps": n, "warmup_s": warm, "steps_per_s_windows": rates}


# ---------------------------------------------------------------- parent side
def run_child(spec: dict, malloc: bool) -> tuple[dict, dict]:
    env = {k: v for k, v in os.environ.items()
           if k not in MALLOC_SETTINGS and k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MATCHNET_MALLOC_SET")}
    env.update(MALLOC_SETTINGS if malloc else {})
    env["MATCHNET_NO_MALLOC_TUNING"] = "1"  # nothing in the child may re-exec itself with other settings
    shown = {k: env.get(k) for k in (*MALLOC_SETTINGS, "OMP_NUM_THREADS", "MATCHNET_NO_MALLOC_TUNING")}
    proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise SystemExit(f"row {spec.get('name', 'peak')} failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1]), shown


def stop(*_) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run as Ctrl-C does: the child is stopped, nothing is written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None, help="default: ../shared/data if present, else data")
    p.add_argument("--recipe", default="60,1,5,1", help="WAY,SHOT,QUERY,EPISODES of the CPU recipe rows")
    p.add_argument("--quick", action="store_true", help="short windows: a smoke check, not a measurement")
    p.add_argument("--only", default="", help="comma-separated row names (and the rows they compare with)")
    p.add_argument("--out", default="bench/cpu_speed.json")
    p.add_argument("--markdown", metavar="FILE.json", help="print the BENCHMARKS.md table of a record and exit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        try:
            print(json.dumps(worker(json.loads(args.worker))))
        except KeyboardInterrupt:  # the parent reports the interruption
            raise SystemExit(130)
        return
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    signal.signal(signal.SIGTERM, stop)
    try:
        recipe = tuple(int(x) for x in args.recipe.split(","))
    except ValueError:
        recipe = ()
    if len(recipe) != 4 or min(recipe) < 1:
        raise SystemExit(f"--recipe: expected WAY,SHOT,QUERY,EPISODES (four positive integers), got {args.recipe!r}")
    data_root = args.data_root or ("../shared/data" if (ROOT.parent / "shared" / "data").is_dir() else "data")
    rows = rows_table(recipe)
    check_chain(rows)
    if args.only:
        want = set(args.only.split(","))
        unknown = want - {r["name"] for r in rows}
        if unknown:
            raise SystemExit(f"--only: no row named {', '.join(sorted(unknown))}")
        want |= {r["compared_with"] for r in rows if r["name"] in want} - {None}
        rows = [r for r in rows if r["name"] in want]
    try:
        record = measure(args, rows, data_root)
    except KeyboardInterrupt:
        raise SystemExit("interrupted: nothing written")
    from matchnet.atomic import write_text

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(markdown(record))
    print(f"\nwall time {record['wall_s']} s; wrote {args.out}")


def measure(args, rows: list[dict], data_root: str) -> dict:
    from train_speed import TRAIN_FLOP

    start = time.perf_counter()
    timing = (dict(warmup_steps=2, warmup_s=0.5, windows=3, window_s=0.5) if args.quick else
              dict(warmup_steps=5, warmup_s=5.0, windows=7, window_s=3.0))
    load0 = os.getloadavg()
    peak, peak_env = run_child({"kind": "peak", "threads": 2, "interop": 1, "quick": args.quick}, malloc=True)
    print(f"peaks (2 threads, malloc tuned): fp32 {peak['float32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s", flush=True)
    out_rows = []
    for r in rows:
        s = r["settings"]
        spec = {"kind": "row", "name": r["name"], "settings": s, "threads": s["threads"], "interop": s["interop"],
                "data_root": data_root, "timing": timing}
        before = os.getloadavg()
        res, env = run_child(spec, s["malloc"])
        images = s["episodes"] * s["way"] * (s["shot"] + s["query"])
        steps = res.pop("steps_per_s_windows")
        ips = [x * images for x in steps]
        row = {**r, "change_text": describe(r, rows), "env": env, "load_average": {"start": before,
               "end": os.getloadavg()}, "shape": f"{s['way']}-way {s['shot']}-shot, {s['query']} queries/class, "
               f"{s['episodes']} episode(s)/step", "images_per_step": images,
               "images_per_s": statistics.median(ips), "episodes_per_s": statistics.median(steps) * s["episodes"],
               "windows_images_per_s": ips, "images_per_s_min_max": [min(ips), max(ips)],
               "pct_fp32_peak": 100 * statistics.median(ips) * TRAIN_FLOP / peak["float32"],
               "pct_bf16_peak": 100 * statistics.median(ips) * TRAIN_FLOP / peak["bfloat16"] if s["bf16"] else None,
               **res}
        base = next((x for x in out_rows if x["name"] == r["compared_with"]), None)
        row["ratio"] = row["images_per_s"] / base["images_per_s"] if base else None
        if s["compile"] and base:  # compile time: the first step's excess over a steady step
            steady = 1 / statistics.median(steps)
            row["compile_s"] = res["first_step_s"] - steady
            gain = images / base["images_per_s"] - steady  # seconds saved per step vs the uncompiled row
            row["break_even_steps"] = row["compile_s"] / gain if gain > 0 else None
        out_rows.append(row)
        print(f"{r['name']:<16} {row['images_per_s']:>8.0f} img/s {row['episodes_per_s']:>7.2f} ep/s  "
              f"[{min(ips):.0f}-{max(ips):.0f}]  " + (f"x{row['ratio']:.2f} vs {base['name']}" if base else ""),
              flush=True)
    by = {x["name"]: x for x in out_rows}
    ratios = {}
    for peer in ("peer", "peer+malloc"):
        if peer in by:
            best = max((x for x in out_rows if x["settings"]["impl"] == "matchnet" and not x["settings"]["fce"]
                        and x["shape"] == by[peer]["shape"]), key=lambda x: x["images_per_s"], default=None)
            if best:
                ratios[f"best_no_fce ({best['name']}) / {peer}"] = best["images_per_s"] / by[peer]["images_per_s"]
            if "r6+fce" in by:
                ratios[f"r6+fce / {peer}"] = by["r6+fce"]["images_per_s"] / by[peer]["images_per_s"]
    cpu, bf16_flag = machine_cpu()
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
            "quick": args.quick, "data_root": data_root, "timing": timing,
            "machine": {"cpu": cpu, "avx512_bf16_flag": bf16_flag, "cores": os.cpu_count(),
                        "torch": peak["torch"], "bf16_native_per_torch": peak["bf16_native"]},
            "peaks": {"fp32_flops": peak["float32"], "bf16_flops": peak["bfloat16"], "env": peak_env,
                      "what": "2048x2048 matmul, best of 3 windows, 2 intra-op / 1 inter-op threads, malloc tuned"},
            "train_flop_per_image": TRAIN_FLOP, "flop_note": "Conv-4 forward + backward only (FCE LSTMs, "
            "attention and Adam not counted)", "peer": {"package": "easyfsl==1.5.0", "note": "peer episodes are "
            "drawn by our sampler before timing: the peer's data loading is not timed (model + step only)"},
            "load_average_at_start": load0, "rows": out_rows, "ratios": ratios,
            "wall_s": round(time.perf_counter() - start, 1)}


def machine_cpu() -> tuple[str, bool]:
    """lscpu's model name; whether /proc/cpuinfo's flags have avx512_bf16."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "", False
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), ""), \
        "avx512_bf16" in flags


def markdown(record: dict) -> str:
    lines = ["| row | change | shape | episodes/s | images/s | % fp32 peak (bf16) | vs compared row |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in record["rows"]:
        pct = f"{r['pct_fp32_peak']:.1f}" + (f" ({r['pct_bf16_peak']:.1f})" if r["pct_bf16_peak"] else "")
        vs = f"x{r['ratio']:.2f} vs {r['compared_with']}" if r["ratio"] else ""
        if r.get("compile_s") is not None:
            be = r.get("break_even_steps")
            vs += f"; compile {r['compile_s']:.0f} s, " + (f"pays after {be:.0f} steps" if be else "never pays")
        lines.append(f"| {r['name']} | {r['change_text']} | {r['shape']} | {r['episodes_per_s']:.2f} | "
                     f"{r['images_per_s']:.0f} | {pct} | {vs} |")
    lines += [""] + [f"{k}: x{v:.2f}" for k, v in record.get("ratios", {}).items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
