"""Worker processes for tests/test_engine.py's 2-rank gloo runs (spawned; a module so that spawn can import it)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def glyph_splits(classes: int = 24):
    from conftest import synthetic_glyphs
    from matchnet.data import FewShotSplit

    images = synthetic_glyphs(classes, 0)

    def part(ids):
        return FewShotSplit(images, torch.tensor(ids), torch.zeros(len(ids), dtype=torch.long), [f"g{i}" for i in ids])
    ids = list(range(classes))
    return {"train": part(ids[:16]), "val": part(ids[16:]), "test": part(ids[16:])}


def fixed_episodes(steps: int, per_step: int):
    """The same episodes for every process: step s uses episodes [s*per_step, (s+1)*per_step)."""
    from matchnet.episodes import EpisodeSampler

    sampler = EpisodeSampler(glyph_splits()["train"], 5, 1, 3, seed=7)
    return [sampler.sample(per_step) for _ in range(steps)]


def config(out: Path, steps: int, **kw):
    from matchnet.train import TrainConfig

    base = dict(name="dist", way=5, shot=1, query=3, meta_batch=4, steps=steps, hidden=8, lr=5e-3, warmup_steps=0,
                val_tasks=[[5, 1]], val_every=steps, val_episodes=10, val_query=3, log_every=1, checkpoint_every=2,
                device="cpu", out_dir=str(out), progress=False)
    return TrainConfig(**{**base, **kw})


def fixed_task(cfg, rank: int, world: int, halves: bool):
    """A Matching Network task on fixed_episodes: rank r takes its share of each step's episodes. With
    halves=True (the 1-process reference), the step's episodes go through the model in `world` parts whose
    losses are averaged: what DDP computes, BatchNorm statistics being per rank."""
    from matchnet.engine import FunctionTask
    from matchnet.episodes import Episodes
    from matchnet.train import episode_loss, validate

    torch.manual_seed(cfg.seed)
    model = cfg.model()
    episodes = fixed_episodes(cfg.steps, cfg.meta_batch)
    counter = [0]
    share = cfg.meta_batch // world

    def part(ep, i, n):
        sl = slice(i * n, (i + 1) * n)
        return Episodes(ep.support[sl], ep.support_labels[sl], ep.query[sl], ep.query_labels[sl], ep.classes[sl],
                        ep.n_way)

    def batch(shard):
        ep = episodes[counter[0]]
        counter[0] += 1
        return ep if halves else part(ep, rank, share)

    def loss(net, ep):
        parts = [part(ep, i, share) for i in range(world)] if halves else [ep]
        values = [episode_loss(net, p, False) for p in parts]
        return sum(v for v, _ in values) / len(values), sum(c for _, c in values) / ep.query_labels.numel()

    gen = torch.Generator().manual_seed(0)
    from matchnet.checkpoint import save_model
    return FunctionTask(model, [gen], batch, loss, lambda m: validate(m, cfg, glyph_splits()["val"]),
                        lambda m, folder: save_model(m, folder), global_batch=cfg.meta_batch), counter


def run(rank: int, world: int, port: int, out: str, mode: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from matchnet.distributed import close_distributed, init_distributed
    from matchnet.engine import fit
    from matchnet.train import train

    if mode in ("draws", "separate"):  # tests/test_distributed.py: a hang must end in an error, not block CI
        import datetime

        import torch.distributed as tdist
        tdist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    init_distributed("cpu")
    try:
        out_dir = Path(out)
        if mode == "draws":
            draws_run(rank, world, out_dir)
        elif mode == "separate":
            separate_folders_run(rank, world, out_dir)
        elif mode == "equivalence":  # two steps on fixed episodes, each rank half of them
            cfg = config(out_dir, 2)
            task, _ = fixed_task(cfg, rank, world, halves=False)
            fit(task, cfg, out_dir, resume=False)
            if rank == 0:
                save_file({k: v.detach().contiguous() for k, v in task.model.state_dict().items()},
                          str(out_dir / "params.safetensors"))
        elif mode == "crash":  # stop after 2 of 4 steps, as a kill after the resume point would
            train(config(out_dir, 4), splits=glyph_splits(), resume=False, stop_after=2)
        elif mode in ("resume", "straight"):
            train(config(out_dir, 4), splits=glyph_splits(), resume=mode == "resume")
    finally:
        close_distributed()


# -- tests/test_distributed.py's runs ------------------------------------------------------------------------

def recording(module, draws: list, tasks: list | None = None):
    """Replace module.fit by one that records every batch the task draws (and the task), then trains."""
    real = module.fit

    def fit(task, *args, **kw):
        batch = task.batch

        def recorded(shard):
            out = batch(shard)
            draws.append(out)
            return out
        task.batch = recorded
        if tasks is not None:
            tasks.append(task)
        return real(task, *args, **kw)
    module.fit = fit
    return real


def draw_tensors(draws: list, kind: str) -> dict[str, torch.Tensor]:
    """What a run drew, as tensors: episodes (classes and support images) or classifier (classes, drawings)."""
    if kind == "matching":
        return {f"{i}.{k}": getattr(ep, k).contiguous() for i, ep in enumerate(draws) for k in ("classes", "support")}
    return {f"{i}.{j}": t.contiguous() for i, d in enumerate(draws) for j, t in enumerate(d)}


def classifier_config(out: Path, **kw):
    from matchnet.baselines import ClassifierConfig

    base = dict(name="clf", hidden=8, batch=8, steps=2, warmup_steps=0, val_every=2, val_episodes=5,
                val_tasks=[[5, 1]], log_every=1, checkpoint_every=2, progress=False)
    return ClassifierConfig(**{**base, **kw})


def sentence_task(**kw):
    """A tiny synthetic corpus (4 label words, 40 sentences) and a small PTB-style config: (cfg, pool)."""
    from matchnet.language.episodes import build_pool
    from matchnet.language.train import SentenceConfig

    words = list(range(10, 14))
    sentences = [[2 + (s % 5), words[s % 4], 7 + (s % 3), 8] for s in range(40)]
    pool = build_pool(sentences, words, min_sentences=4)
    base = dict(embed_dim=8, hidden=8, way=2, shots=[1], query=1, meta_batch=2, steps=2, warmup_steps=0, val_way=2,
                val_episodes=4, val_every=2, log_every=1, checkpoint_every=2, progress=False)
    return SentenceConfig(**{**base, **kw}), pool


def draws_run(rank: int, world: int, out_dir: Path) -> None:
    """Two steps of the Matching Network (the real sampler), of the baseline classifier and of the PTB sentence
    task; each rank saves what it drew."""
    import matchnet.baselines.classifier as classifier
    import matchnet.language.train as sentences
    import matchnet.train as matching

    splits = glyph_splits()
    episodes: list = []
    recording(matching, episodes)
    matching.train(config(out_dir / "matching", 2), splits=splits, resume=False)
    images: list = []
    recording(classifier, images)
    classifier.train_classifier(classifier_config(out_dir), splits, out_dir / "clf", torch.device("cpu"),
                                resume=False)
    blanks: list = []
    recording(sentences, blanks)
    cfg, pool = sentence_task()
    sentences.train(cfg, 20, pool, pool, out_dir / "ptb", resume=False)
    save_file({**{f"matching.{k}": v for k, v in draw_tensors(episodes, "matching").items()},
               **{f"classifier.{k}": v for k, v in draw_tensors(images, "classifier").items()},
               **{f"ptb.{k}": v for k, v in draw_tensors(blanks, "matching").items()}},
              str(out_dir / f"draws{rank}.safetensors"))


def separate_folders_run(rank: int, world: int, out_dir: Path) -> None:
    """Each rank with its own run folder (machines that share no file system). Rank 0 writes a resume point at
    step 2 into its folder only; resuming must refuse on every rank. Then rank 1 gets a copy of it: both resume
    at step 2 and rank 0 alone moves on to step 3; resuming again must refuse (steps 3 and 2)."""
    import shutil

    import torch.distributed as tdist
    from matchnet.engine import TrainingError
    from matchnet.train import train

    mine = out_dir / f"rank{rank}"
    splits = glyph_splits()
    outcome = []

    def attempt(**kw):
        try:
            train(config(mine, 4), splits=splits, **kw)
            outcome.append("trained")
        except TrainingError as e:
            outcome.append(f"refused: {e}")

    attempt(resume=False, stop_after=2)
    attempt()  # rank 1 sees no last.safetensors
    tdist.barrier()
    if rank == 1:
        shutil.rmtree(mine, ignore_errors=True)
        shutil.copytree(out_dir / "rank0", mine)
    tdist.barrier()
    attempt(stop_after=1)  # both at step 2: agreed
    attempt()  # rank 0 at step 3, rank 1 at step 2
    (out_dir / f"outcome{rank}.json").write_text(__import__("json").dumps(outcome))


# The tail of a child-process script that runs train/run.py's main, with SLOW_STEP set: that step's batch waits
# {sleep} seconds, so that a test can signal the run at a known point. Used by tests that kill real CLI runs;
# the script is str.format()ted with run= (train/run.py's path).
SLOW_STEP_RUN_CLI = """slow_step = int(os.environ.get("SLOW_STEP", "0"))
plain = T.matching_task
def matching_task(*a, **k):
    task = plain(*a, **k)
    batch, calls = task.batch, [0]
    def slow_batch(*args, **kwargs):
        calls[0] += 1
        if calls[0] == slow_step:
            print("STEP", flush=True)
            time.sleep({sleep})
        return batch(*args, **kwargs)
    task.batch = slow_batch
    return task
T.matching_task = matching_task
import importlib.util
spec = importlib.util.spec_from_file_location("run_cli", {run!r})
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)
sys.exit(run.main(sys.argv[1:]))
"""
