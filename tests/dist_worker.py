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

    init_distributed("cpu")
    try:
        out_dir = Path(out)
        if mode == "equivalence":  # two steps on fixed episodes, each rank half of them
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
