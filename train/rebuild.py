"""`train/run.py rebuild`: retrain, evaluate and re-ship every model the project ships, optionally publishing each.

One config per shipped model in train/configs/ (smoke.toml and the baseline_* / ptb_* configs of the other
tables aside); the config's `name` is its folder in assets/.
Per model: train (runs/<name>/), evaluate runs/<name>/best on the test split, write results.json and
training.json beside it, copy checkpoint + results + training record + log into assets/<name>/, optionally
publish. docs/RESULTS.md is regenerated at the end.

Interrupt it at any time and run the same command again: train() resumes from runs/<name>/last.safetensors, and
runs/rebuild_state.json records which steps each model finished for the current text of its config, so finished
work is skipped. Editing a config retrains that model from scratch; --restart forgets everything. As with
`train`, runs/ and the data root are relative to the working directory; assets/ and docs/ are the checkout's.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from matchnet.atomic import write_text, write_with
from matchnet.checkpoint import CONFIG, WEIGHTS
from matchnet.data import load_splits
from matchnet.results import write_results_md
from matchnet.train import TrainConfig, resolve_device, train
from train import costs

# smoke: a pipeline check; omniglot_lake_within: a candidate recipe for omniglot-lake, shipped only once it
# beats omniglot_lake.toml on validation (its full run needs a GPU).
SKIP = {"smoke.toml", "omniglot_lake_within.toml"}
# Configs of the other tables: trained by `train/run.py table omniglot` (baselines), `table ptb` and
# `table miniimagenet` and `table imagenet`, not here.
OTHER_TABLES = ("baseline_", "ptb_", "miniimagenet_", "imagenet_")
# Measured: ~70 s per 5000-step model on one H100 (start-up, validation and bf16 included).
H100_SECONDS_PER_STEP = 70 / 5000
EVAL_SECONDS = 10  # data loading + 4 x 1000 test episodes on an H100, roughly
PHASES = ("trained", "evaluated", "shipped")


@dataclass
class Job:
    toml: Path
    cfg: TrainConfig
    sha: str  # of the config file's bytes: a changed config means a fresh model
    done: list[str] = field(default_factory=list)
    fresh: bool = False  # start training over (config changed, or --restart)
    resume_step: int = 0

    @property
    def name(self) -> str:
        return self.cfg.name

    def todo(self, push_repo: str | None) -> list[str]:
        phases = [p for p in PHASES if p not in self.done]
        if push_repo and f"pushed:{push_repo}" not in self.done:
            phases.append("pushed")
        return phases


def push_target(push_to: str, name: str) -> str:
    """--push-to USER puts a model at USER/<name>; --push-to USER/PREFIX at USER/PREFIX-<name>."""
    return f"{push_to}/{name}" if "/" not in push_to else f"{push_to}-{name}"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _resume_step(run_dir: Path) -> int:
    last = run_dir / "last.safetensors"
    if not last.is_file():
        return 0
    from safetensors import safe_open

    try:
        with safe_open(str(last), framework="pt") as f:
            return int(json.loads(f.metadata()["info"])["step"])
    except Exception:  # unreadable resume point: train() will report it; the plan just says "from scratch"
        return 0


def make_jobs(root: Path, state: dict, overrides: dict, only: list[str], restart: bool) -> list[Job]:
    tomls = sorted(p for p in (root / "train" / "configs").glob("*.toml")
                   if p.name not in SKIP and not p.name.startswith(OTHER_TABLES))
    jobs = []
    for toml in tomls:
        cfg = TrainConfig.from_toml(toml, **overrides)
        if only and cfg.name not in only and toml.stem not in only:
            continue
        job = Job(toml, cfg, _sha(toml))
        entry = state.get(cfg.name, {})
        if restart or (entry and entry.get("sha") != job.sha):
            job.fresh = True
        else:
            job.done = list(entry.get("done", []))
            job.resume_step = _resume_step(cfg.run_dir)
        jobs.append(job)
    unknown = set(only) - {j.name for j in jobs} - {j.toml.stem for j in jobs}
    if unknown:
        raise ValueError(f"--only {sorted(unknown)}: no such config in train/configs/ (smoke.toml is not rebuilt)")
    return jobs


def estimate_seconds(job: Job, device: torch.device, episodes: int = 1000) -> float:
    """Seconds left for this job: on a GPU at the H100's measured pace; on a CPU from the CPU records
    (train/costs.py; 0 where a phase has no CPU measurement)."""
    steps_left = job.cfg.steps - (0 if job.fresh else min(job.resume_step, job.cfg.steps))
    if device.type == "cuda":
        train_s = steps_left * H100_SECONDS_PER_STEP if "trained" not in job.done else 0
        return train_s + (EVAL_SECONDS if "evaluated" not in job.done else 0)
    train = costs.train_cost(job.cfg, steps=steps_left) if "trained" not in job.done and steps_left else None
    test = costs.eval_cost(episodes) if "evaluated" not in job.done else None
    return (train.seconds if train else 0.0) + (test.seconds if test else 0.0)


def print_plan(jobs: list[Job], device: torch.device, device_label: str, push_to: str | None,
               episodes: int = 1000) -> None:
    print(f"rebuild plan, on {device_label}:")
    total = 0.0
    for i, job in enumerate(jobs, 1):
        c = job.cfg
        repo = push_target(push_to, job.name) if push_to else None
        todo = job.todo(repo)
        steps = {"evaluated": "evaluate", "shipped": f"copy to assets/{job.name}/", "pushed": f"publish to {repo}"}
        if "trained" in todo:
            start = ("from scratch" + (" (config changed or --restart)" if job.fresh else "")
                     if job.fresh or not job.resume_step else f"resuming at step {job.resume_step}")
            steps["trained"] = f"train {c.steps} steps {start}"
        what = ", ".join(steps[p] for p in todo) or "up to date, skipped"
        est = estimate_seconds(job, device, episodes)
        total += est
        print(f"  {i}. {job.name:<22} {job.toml.name:<28} {'FCE' if c.fce else 'no FCE':<6} split {c.split:<8} "
              f"{what}" + (f"  (~{costs.duration(est)})" if est else ""))
    if device.type == "cuda":
        print(f"estimated time: ~{total / 60:.1f} min at the H100's ~70 s per 5000-step model")
        return
    todo = [j for j in jobs if "trained" in j.todo(None)]
    train = costs.train_cost(todo[0].cfg) if todo else None
    test = costs.eval_cost(episodes)
    if total == 0 and (todo or any("evaluated" in j.todo(None) for j in jobs)):
        print("estimated time on this CPU: not measured (no CPU record in docs/bench/)")
        return
    gpu_min = sum(estimate_seconds(j, torch.device("cuda")) for j in jobs) / 60
    print(f"estimated time: ~{costs.duration(total)} on a quiet 2-core CPU (an estimate from measured CPU rates)"
          + (f"\n  per model: {train.how}" if train else "")
          + (f"\n  per evaluation: {test.how}" if test else "")
          + f"\n  not included: start-up and data loading; FCE's LSTMs (not measured on a CPU)"
          + f"\n  {costs.UNDER_LOAD}"
          + f"\n  on one H100 the same plan is ~{gpu_min:.0f} min: use --device cuda where there is one")


def run(root: Path, *, device: str, data_root: str | None, push_to: str | None, private: bool, only: list[str],
        restart: bool, episodes: int, plan_only: bool, evaluate: Callable[..., dict],
        hardware: Callable[[torch.device], str]) -> None:
    """Rebuild as the module docstring says. `evaluate` and `hardware` are train/run.py's own functions."""
    from matchnet import hub

    dev = resolve_device(device)
    overrides = {"device": dev.type, **({"data_root": data_root} if data_root else {})}
    state = State(Path("runs") / "rebuild_state.json", fresh=restart)  # beside runs/<name>/, as train() has them
    jobs = make_jobs(root, state.data, overrides, only, restart)
    print_plan(jobs, dev, hardware(dev), push_to, episodes)
    if plan_only:
        return
    if push_to and any("pushed" in job.todo(push_target(push_to, job.name)) for job in jobs):
        hub.check_hub_access()  # before hours of training, not after
    print(f"progress is saved in {state.path}; interrupt at will and rerun the same command to resume", flush=True)
    splits_cache: dict[tuple, dict] = {}
    for i, job in enumerate(jobs, 1):
        cfg, assets = job.cfg, root / "assets" / job.name
        repo = push_target(push_to, job.name) if push_to else None
        todo = job.todo(repo)
        say = lambda text: print(f"[{i}/{len(jobs)}] {job.name}: {text}", flush=True)  # noqa: E731
        if not todo:
            say("up to date")
            continue
        t0 = time.perf_counter()
        if "trained" in todo:
            say(f"training ({job.toml.name})")
            state.record(job, reset=job.fresh)  # the config's sha first: an edit made meanwhile restarts it
            key = (cfg.dataset, cfg.split, cfg.data_root)
            if key not in splits_cache:
                splits_cache[key] = load_splits(cfg.dataset, cfg.split, cfg.data_root, cfg.download)
            seconds = train(cfg, splits=splits_cache[key], resume=not job.fresh)["seconds"]
            job.done.append("trained")
            state.record(job, train_seconds=round(state.data[job.name].get("train_seconds", 0) + seconds, 1))
        if "evaluated" in todo:
            say(f"evaluating {cfg.run_dir / 'best'} on the test split")
            write_records(job, dev, episodes, evaluate, hardware, state.data[job.name].get("train_seconds"))
            job.done.append("evaluated")
            state.record(job)
        if "shipped" in todo:
            ship(cfg.run_dir, assets)
            job.done.append("shipped")
            state.record(job)
            say(f"copied to {assets}")
        if "pushed" in todo:
            say(f"publishing to {repo}")
            print(f"  {hub.publish(assets, repo, private=private)}", flush=True)
            job.done.append(f"pushed:{repo}")
            state.record(job)
        say(f"done in {time.perf_counter() - t0:.0f} s")
    print(f"wrote {write_results_md(root)}")


class State:
    """runs/rebuild_state.json: per model, the config's sha and the phases done; rewritten atomically."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self.data = {} if fresh or not path.is_file() else json.loads(path.read_text())

    def record(self, job: Job, reset: bool = False, **extra) -> None:
        if reset:
            self.data.pop(job.name, None)
        self.data.setdefault(job.name, {}).update(sha=job.sha, done=job.done, **extra)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def write_records(job: Job, dev: torch.device, episodes: int, evaluate: Callable[..., dict],
                  hardware: Callable[[torch.device], str], train_seconds: float | None) -> None:
    """runs/<name>/results.json and training.json, in the form the shipped assets have them."""
    cfg, run_dir = job.cfg, job.cfg.run_dir
    result = evaluate(run_dir / "best", cfg.dataset, cfg.split, cfg.data_root, dev.type, episodes, 0, None)
    result["checkpoint"] = f"assets/{job.name}"  # where it ships
    result["command"] = (f"python train/run.py eval --checkpoint assets/{job.name} --device {dev.type} "
                         f"--episodes {episodes} --seed 0")
    write_text(run_dir / "results.json", json.dumps(result, indent=2) + "\n")
    way, shot = cfg.val_tasks[0]
    training = {
        "dataset": cfg.dataset, "split": cfg.split, "trained_on": f"{hardware(dev)} (torch {torch.__version__})",
        "command": f"python train/run.py train --config train/configs/{job.toml.name} --device {dev.type} --eval",
        "train_seconds": train_seconds,
        "selected": f"best {way}-way {shot}-shot validation accuracy (checked every {cfg.val_every} steps)",
        "train_config": json.loads((run_dir / "train_config.json").read_text()),
    }
    write_text(run_dir / "training.json", json.dumps(training, indent=2) + "\n")


def ship(run_dir: Path, assets: Path) -> None:
    """Copy the best checkpoint and its records into assets/<name>/, each file replaced atomically."""
    assets.mkdir(parents=True, exist_ok=True)
    for src, dst in [(run_dir / "best" / CONFIG, CONFIG), (run_dir / "best" / WEIGHTS, WEIGHTS),
                     (run_dir / "results.json", "results.json"), (run_dir / "training.json", "training.json"),
                     (run_dir / "log.jsonl", "training_log.jsonl")]:
        write_with(assets / dst, lambda tmp, src=src: shutil.copy2(src, tmp))
