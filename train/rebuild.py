"""`train/run.py rebuild`: retrain, evaluate and re-ship every model the project ships, optionally publishing each.

One config per shipped model in train/configs/ (smoke.toml and the baseline_* / ptb_* configs of the other
tables aside); the config's `name` is its folder in assets/.
Per model: train (runs/<name>/), evaluate runs/<name>/best on the test split, write results.json and
training.json beside it, compare it with the shipped assets/<name>/ on the same validation and test episodes
(train/compare.py: the new one ships only where its selection metric on validation is at least the old one's),
copy checkpoint + results + training record + log + comparison into assets/<name>/ (or only the comparison,
where the old model stays), optionally publish. docs/RESULTS.md is regenerated at the end; each phase's
measured seconds and images go into runs/rebuild_state.json, the whole run's into runs/rebuild_summary.json.

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
from matchnet.checkpoint import CONFIG, WEIGHTS, CheckpointError, read_config
from matchnet.data import load_splits
from matchnet.results import write_results_md
from matchnet.train import TrainConfig, resolve_device, train
from train import compare, costs

# smoke: a pipeline check, never shipped. omniglot_lake_within ships as its own model (omniglot-lake-within):
# within-alphabet, chosen on held-out background alphabets (docs/results/within_alphabet.md).
SKIP = {"smoke.toml"}
# Configs of the other tables: trained by `train/run.py table omniglot` (baselines), `table ptb` and
# `table miniimagenet` and `table imagenet`, not here.
OTHER_TABLES = ("baseline_", "ptb_", "miniimagenet_", "imagenet_")
# Measured: ~70 s per 5000-step model on one H100 (start-up, validation and bf16 included).
H100_SECONDS_PER_STEP = 70 / 5000
EVAL_SECONDS = 10  # data loading + 4 x 1000 test episodes on an H100, roughly
PHASES = ("trained", "evaluated", "compared", "shipped")


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

    @property
    def steps_left(self) -> int:
        return self.cfg.steps - (0 if self.fresh else min(self.resume_step, self.cfg.steps))

    @property
    def assets(self) -> Path:
        return self.toml.parent.parent.parent / "assets" / self.name  # <root>/train/configs/<toml>

    def todo(self, push_repo: str | None) -> list[str]:
        # a phase redone means every later one is redone too (a new comparison must be shipped again)
        missing = [i for i, p in enumerate(PHASES) if p not in self.done]
        phases = list(PHASES[missing[0]:]) if missing else []
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


def phase_images(job: Job, phase: str, episodes: int) -> int:
    """Test-time images the evaluated or compared phase reads: old vs new scores both models' val tasks and the
    old model's test columns (the new one's are the evaluated phase's, reused)."""
    val, test = compare.work_images(job.cfg, episodes)
    if phase == "evaluated":
        return test
    old = (job.assets / WEIGHTS).is_file()
    return val * (2 if old else 1) + (test if old else 0)


def cpu_seconds(job: Job, phase: str, episodes: int) -> float:
    """One phase's estimated seconds on the CPU: the config's own shipped model's measured rates where they fit
    (costs.own_rates), else the project's CPU records (costs.py; 0 where none is measured)."""
    own = costs.own_rates(job.cfg, job.assets)
    if phase == "trained":
        if "train" in own:
            return job.steps_left * images_per_step(job.cfg) / own["train"][0]
        cost = costs.train_cost(job.cfg, steps=job.steps_left) if job.steps_left else None
        return cost.seconds if cost else 0.0
    rate = own["eval"][0] if "eval" in own else costs.eval_rate()
    return phase_images(job, phase, episodes) / rate if rate else 0.0


def estimate_seconds(job: Job, device: torch.device, episodes: int = 1000) -> float:
    """Seconds left for this job: on a GPU at the H100's measured pace; on a CPU from cpu_seconds."""
    if device.type == "cuda":
        train_s = job.steps_left * H100_SECONDS_PER_STEP if "trained" not in job.done else 0
        return train_s + (EVAL_SECONDS if "evaluated" not in job.done else 0)
    return sum(cpu_seconds(job, p, episodes) for p in ("trained", "evaluated", "compared") if p not in job.done)


def print_plan(jobs: list[Job], device: torch.device, device_label: str, push_to: str | None,
               episodes: int = 1000) -> None:
    print(f"rebuild plan, on {device_label}:")
    total = 0.0
    for i, job in enumerate(jobs, 1):
        c = job.cfg
        repo = push_target(push_to, job.name) if push_to else None
        todo = job.todo(repo)
        steps = {"evaluated": "evaluate", "compared": "old vs new on val and test", "shipped": f"copy to assets/{job.name}/", "pushed": f"publish to {repo}"}
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
    if test:  # the plan line says so: old vs new scores two models
        test = costs.Cost(test.seconds, test.how + "; old vs new: the old model's four columns (the new one's "
                                                   "are reused) plus both models' val tasks")
    if total == 0 and (todo or any("evaluated" in j.todo(None) for j in jobs)):
        print("estimated time on this CPU: not measured (no CPU record in docs/bench/)")
        return
    own = {j.name: r for j in jobs if j.todo(None) and (r := costs.own_rates(j.cfg, j.assets))}
    gpu_min = sum(estimate_seconds(j, torch.device("cuda")) for j in jobs) / 60
    print(f"estimated time: ~{costs.duration(total)} on a quiet 2-core CPU (an estimate from measured CPU rates)"
          + (f"\n  per model: {train.how}" if train else "")
          + (f"\n  per evaluation: {test.how}" if test else "")
          + "".join(f"\n  {name}, from its own shipped model instead: " + "; ".join(how for _, how in rates.values())
                    for name, rates in own.items())
          + ("\n  not included: start-up and data loading" + ("" if costs.fast_rate(True) else
             "; FCE's LSTMs (not measured on a CPU)"))
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
    progress = Progress(jobs, dev, episodes, root)
    splits_of = SplitCache()

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
            say(f"training ({job.toml.name}); {progress.line()}")
            state.record(job, reset=job.fresh)  # the config's sha first: an edit made meanwhile restarts it
            started = time.perf_counter()
            summary = train(cfg, splits=splits_of(cfg), resume=not job.fresh)
            if summary.get("interrupted"):  # the engine saved a resume point; "trained" would be a lie
                raise KeyboardInterrupt
            steps = summary.get("steps", cfg.steps)
            job.done.append("trained")
            # the engine's seconds count every session of this run (its log's times), start-up included
            state.record(job, train_seconds=round(summary["seconds"], 1), train_steps=steps,
                         train_images=steps * images_per_step(cfg))
            progress.finished(job, "trained", time.perf_counter() - started)
        if "evaluated" in todo:
            say(f"evaluating {cfg.run_dir / 'best'} on the test split; {progress.line()}")
            started = time.perf_counter()
            result = write_records(job, dev, episodes, evaluate, hardware, state.data[job.name])
            job.done.append("evaluated")
            state.record(job, eval_seconds=result.get("eval_seconds"),
                         eval_images=compare.work_images(cfg, episodes, result.get("test_classes"))[1])
            progress.finished(job, "evaluated", time.perf_counter() - started)
        if "compared" in todo:
            say(f"old vs new: scoring {assets} and {cfg.run_dir / 'best'} on the same episodes; {progress.line()}")
            started = time.perf_counter()
            old_side, new_side = image_side(assets), image_side(cfg.run_dir / "best")
            other = None not in (old_side, new_side) and old_side != new_side
            record = compare.compare(job.name, cfg, cfg.run_dir / "best", assets, splits_of(cfg), dev, episodes,
                                     new_test=evaluated_test(cfg.run_dir / "results.json", episodes),
                                     old_splits=splits_of(cfg, old_side) if other else None)
            write_text(cfg.run_dir / "comparison.json", json.dumps(record, indent=2) + "\n")
            job.done.append("compared")
            state.record(job, compare_seconds=round(time.perf_counter() - started, 1), shipped=record["shipped"],
                         compare_images=sum((record.get(w) or {}).get("images", 0) for w in ("old", "new")))
            progress.finished(job, "compared", time.perf_counter() - started)
            say(f"ships the {record['shipped']} model: {record['reason']}")
        if "shipped" in todo:
            kept = state.data[job.name].get("shipped") == "old"
            ship(cfg.run_dir, assets, keep_old=kept)
            job.done.append("shipped")
            state.record(job)
            say(f"kept the old model in {assets} (comparison.json beside it)" if kept else f"copied to {assets}")
        if "pushed" in todo:
            say(f"publishing to {repo}")
            print(f"  {hub.publish(assets, repo, private=private)}", flush=True)
            job.done.append(f"pushed:{repo}")
            state.record(job)
        say(f"done in {time.perf_counter() - t0:.0f} s; {progress.line()}")
    print(f"wrote {write_results_md(root)}")
    summary = progress.summary(state.data)
    write_text(Path("runs") / "rebuild_summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"rebuild: {costs.duration(summary['seconds_this_session'])} this session"
          + (f" (estimated at its start: ~{costs.duration(summary['estimated_seconds'])})"
             if summary["estimated_seconds"] else "")
          + f"; measured per job in {state.path}; summary in runs/rebuild_summary.json", flush=True)


def images_per_step(cfg: TrainConfig) -> int:
    return cfg.meta_batch * cfg.way * (cfg.shot + cfg.query)


class Progress:
    """One status line over the whole rebuild: work left in estimated seconds (train/costs.py's rates, or images
    where no rate is measured), scaled by how fast this run has gone so far against those estimates."""

    def __init__(self, jobs: list[Job], dev: torch.device, episodes: int, root: Path):
        self.t0, self.done_units, self.done_seconds = time.perf_counter(), 0.0, 0.0
        self.seconds_units = dev.type == "cpu" and costs.eval_rate() is not None and costs.train_rate(1) is not None
        self.units = {(j.name, p): self._units(j, p, dev, episodes, root) for j in jobs for p in j.todo(None)
                      if p in ("trained", "evaluated", "compared")}
        self.estimated = sum(self.units.values()) if self.seconds_units else 0.0

    def _units(self, job: Job, phase: str, dev: torch.device, episodes: int, root: Path) -> float:
        if self.seconds_units:
            return cpu_seconds(job, phase, episodes)
        if phase == "trained":
            val, _ = compare.work_images(job.cfg, episodes)
            return (job.steps_left * images_per_step(job.cfg)
                    + max(1, job.steps_left // job.cfg.val_every) * job.cfg.val_episodes * val / episodes)
        return phase_images(job, phase, episodes)

    def finished(self, job: Job, phase: str, seconds: float) -> None:
        self.done_units += self.units.pop((job.name, phase), 0.0)
        self.done_seconds += seconds

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        left = sum(self.units.values())
        total = left + self.done_units
        pct = 100 * self.done_units / total if total else 100.0
        if self.done_units and self.done_seconds:  # the rate measured in this run
            eta = f"~{costs.duration(left * self.done_seconds / self.done_units)} left at this run's measured pace"
        elif self.seconds_units:
            eta = f"~{costs.duration(left)} left (estimate from the CPU records; nothing measured yet)"
        else:
            eta = "time left: not known until the first phase has been timed"
        return f"rebuild {pct:.0f}% done, {costs.duration(elapsed)} elapsed, {eta}"

    def summary(self, state: dict) -> dict:
        keys = ("train_seconds", "train_images", "eval_seconds", "eval_images", "compare_seconds", "compare_images",
                "shipped")
        return {"seconds_this_session": round(time.perf_counter() - self.t0, 1),
                "estimated_seconds": round(self.estimated, 1),
                "jobs": {name: {k: entry.get(k) for k in keys} for name, entry in state.items()},
                "torch": torch.__version__, "hardware": hardware_line(torch.device("cpu"))}


def hardware_line(dev: torch.device) -> str:
    from matchnet.engine import hardware

    if dev.type != "cpu":
        return hardware(dev)
    from matchnet.cpu import describe

    return f"{hardware(dev)}; {describe()}"


def check_command(root: Path, command: str) -> str | None:
    """Why a training.json's command would not reproduce its model in this checkout (None: it names an
    existing subcommand of train/run.py, and a config in train/configs/ that exists)."""
    import shlex

    words = shlex.split(command)
    if words[:2] != ["python", "train/run.py"] or len(words) < 3:
        return f"{command!r} is not a train/run.py command"
    if words[2] not in ("train", "rebuild", "table"):
        return f"{command!r}: {words[2]!r} is not a command that trains"
    if "--config" in words:
        toml = words[words.index("--config") + 1]
        if not (root / toml).is_file():
            return f"{command!r}: {toml} does not exist"
    if "--only" in words:
        name = words[words.index("--only") + 1]
        from matchnet.config import read_toml

        # the configs `rebuild` builds (as make_jobs selects them), by name or file stem: the other tables'
        # configs are not TrainConfigs
        tomls = [p for p in (root / "train" / "configs").glob("*.toml")
                 if p.name not in SKIP and not p.name.startswith(OTHER_TABLES)]
        names = {read_toml(p).get("name", p.stem) for p in tomls} | {p.stem for p in tomls}
        if name not in names:
            return f"{command!r}: no config in train/configs/ is named {name}"
    if words[2] in ("train", "rebuild") and "--config" not in words and "--only" not in words:
        return f"{command!r} names no config"
    return None


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


class SplitCache:
    """Each dataset's splits loaded once per set of data options (a config's [data_options], e.g. image_size = 56:
    training, evaluation and the comparison all read the images the config names, not the loader's defaults)."""

    def __init__(self) -> None:
        self.loaded: dict[tuple, dict] = {}

    def __call__(self, cfg: TrainConfig, image_size: int | None = None) -> dict:
        options = dict(cfg.data_options or {})
        if image_size is not None:
            options["image_size"] = image_size
        key = (cfg.dataset, cfg.split, cfg.data_root, json.dumps(options, sort_keys=True))
        if key not in self.loaded:
            self.loaded[key] = load_splits(cfg.dataset, cfg.split, cfg.data_root, cfg.download, **options)
        return self.loaded[key]


def image_side(folder: Path) -> int | None:
    """The image side of the checkpoint in folder (None: nothing readable there); compare scores the shipped model
    on images at its side when the new one was trained at another."""
    try:
        return int(read_config(folder)["image_size"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None


def evaluated_test(path: Path, episodes: int) -> dict | None:
    """The evaluated phase's test scores (results.json: evaluate_table, seed 0) when they are of `episodes`
    episodes: the comparison reuses them instead of scoring the new model's test episodes twice."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if result.get("episodes") != episodes or result.get("seed") != 0:
        return None
    return {k: {"mean": v["mean"], "ci95": v["ci95"]} for k, v in result.get("accuracy", {}).items()}


def write_records(job: Job, dev: torch.device, episodes: int, evaluate: Callable[..., dict],
                  hardware: Callable[[torch.device], str], measured: dict) -> dict:
    """runs/<name>/results.json and training.json, in the form the shipped assets have them; returns the results."""
    cfg, run_dir = job.cfg, job.cfg.run_dir
    result = evaluate(run_dir / "best", cfg.dataset, cfg.split, cfg.data_root, dev.type, episodes, 0, None,
                      data_options=cfg.data_options)
    result["checkpoint"] = f"assets/{job.name}"  # where it ships
    result["command"] = (f"python train/run.py eval --checkpoint assets/{job.name} --device {dev.type} "
                         f"--episodes {episodes} --seed 0")
    write_text(run_dir / "results.json", json.dumps(result, indent=2) + "\n")
    way, shot = cfg.val_tasks[0]
    training = {
        "dataset": cfg.dataset, "split": cfg.split,
        "rebuilt_by": "train/run.py rebuild",  # tests/test_rebuild_cpu.py checks the command of every such record
        "command": f"python train/run.py rebuild --device {dev.type} --only {job.name}",
        "train_command": f"python train/run.py train --config train/configs/{job.toml.name} --device {dev.type} --eval",
        "torch": torch.__version__, "hardware": hardware_line(dev),
        "trained_on": f"{hardware(dev)} (torch {torch.__version__})",
        "date": time.strftime("%Y-%m-%d"),
        "train_seconds": measured.get("train_seconds"), "train_steps": measured.get("train_steps"),
        "train_images": measured.get("train_images"),
        "selected": f"best {way}-way {shot}-shot validation accuracy (checked every {cfg.val_every} steps)",
        "train_config": json.loads((run_dir / "train_config.json").read_text()),
    }
    training = {k: v for k, v in training.items() if v is not None}  # the card formats what is there
    write_text(run_dir / "training.json", json.dumps(training, indent=2) + "\n")
    return result


def ship(run_dir: Path, assets: Path, keep_old: bool = False) -> None:
    """Copy the best checkpoint and its records into assets/<name>/, each file replaced atomically; with
    keep_old, only the comparison that kept the old model goes beside it."""
    assets.mkdir(parents=True, exist_ok=True)
    files = [(run_dir / "comparison.json", "comparison.json")]
    if not keep_old:
        files = [(run_dir / "best" / CONFIG, CONFIG), (run_dir / "best" / WEIGHTS, WEIGHTS),
                 (run_dir / "results.json", "results.json"), (run_dir / "training.json", "training.json"),
                 (run_dir / "log.jsonl", "training_log.jsonl")] + files
    for src, dst in files:
        write_with(assets / dst, lambda tmp, src=src: shutil.copy2(src, tmp))
