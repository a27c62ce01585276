"""Training on N processes: ranks agree whether to resume, every task's ranks draw their own batches (the
contract in matchnet.engine's docstring), the resume point carries the global RNG, a world-size change re-seeds
from (seed, rank, step); plus the loop's config base and its learning-rate schedule."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

import dist_worker
from dist_worker import classifier_config, config, draw_tensors, glyph_splits, recording, sentence_task

ROOT = Path(__file__).resolve().parents[1]


def spawn(out: Path, mode: str, limit: float = 90.0) -> None:
    """Two gloo processes running dist_worker.run(mode); a run still going after `limit` seconds is killed and
    fails the test (a hang must not block CI)."""
    from test_engine import free_port

    ctx = mp.spawn(dist_worker.run, args=(2, free_port(), str(out), mode), nprocs=2, join=False)
    deadline = time.monotonic() + limit
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the 2-rank {mode!r} run did not finish within {limit:.0f} s (a hang)")


def test_ranks_that_do_not_share_a_run_folder_refuse_to_resume_on_every_rank(tmp_path):
    spawn(tmp_path, "separate")
    outcomes = [json.loads((tmp_path / f"outcome{r}.json").read_text()) for r in range(2)]
    for outcome in outcomes:
        assert outcome[0] == "trained"  # 2 of 4 steps, rank 0 writes its folder only
        assert "rank(s) 1 of 2 cannot see it" in outcome[1] and "--restart" in outcome[1]
        assert outcome[2] == "trained"  # the same resume point on both ranks: an agreed resume
        assert "restored different steps (rank 0: 3, rank 1: 2)" in outcome[3]
    for i in (1, 3):  # the same message on every rank, each naming its own folder's file
        assert outcomes[1][i].replace(f"{tmp_path}/rank1", f"{tmp_path}/rank0") == outcomes[0][i]
    from matchnet.checkpoint import load_state
    assert load_state(tmp_path / "rank0" / "last.safetensors")[1]["step"] == 3  # the refusals changed nothing
    assert not (tmp_path / "rank0" / "final").exists()


def record_single(tmp_path: Path, seed: int, meta_batch: int, batch: int,
                  sentence_batch: int) -> dict[str, torch.Tensor]:
    """What one process with `seed` draws in 2 steps of each task, with one rank's share per step."""
    import matchnet.baselines.classifier as classifier
    import matchnet.language.train as sentences
    import matchnet.train as matching

    splits = glyph_splits()
    episodes, images = [], []
    real = recording(matching, episodes)
    try:
        matching.train(config(tmp_path / f"m{seed}", 2, meta_batch=meta_batch, seed=seed), splits=splits)
    finally:
        matching.fit = real
    real = recording(classifier, images)
    try:
        classifier.train_classifier(classifier_config(tmp_path, batch=batch, seed=seed), splits,
                                    tmp_path / f"c{seed}", torch.device("cpu"))
    finally:
        classifier.fit = real
    blanks: list = []
    real = recording(sentences, blanks)
    try:
        cfg, pool = sentence_task(meta_batch=sentence_batch, seed=seed)
        sentences.train(cfg, 20, pool, pool, tmp_path / f"p{seed}")
    finally:
        sentences.fit = real
    return {**{f"matching.{k}": v for k, v in draw_tensors(episodes, "matching").items()},
            **{f"classifier.{k}": v for k, v in draw_tensors(images, "classifier").items()},
            **{f"ptb.{k}": v for k, v in draw_tensors(blanks, "matching").items()}}


def test_two_ranks_draw_their_own_share_through_the_real_samplers(tmp_path):
    """Rank r draws global / 2 items a step, exactly what one process seeded rank_seed(seed, r) draws: the
    Matching Network's episodes, the baseline classifier's images and the PTB task's sentence episodes (the
    last two: every rank drew the same ones before)."""
    from matchnet.distributed import rank_seed

    spawn(tmp_path, "draws")
    ranks = [load_file(str(tmp_path / f"draws{r}.safetensors")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) == 3 * 2 * 2
    for key in ranks[0]:
        if not key.startswith("ptb.") or key.endswith(".support"):  # 2 of 4 PTB words may repeat; not sentences
            assert not torch.equal(ranks[0][key], ranks[1][key]), key  # the ranks drew different batches
    cfg = config(tmp_path, 2)
    assert ranks[0]["matching.0.classes"].shape[0] == cfg.meta_batch // 2
    assert ranks[0]["classifier.0.0"].shape[0] == classifier_config(tmp_path).batch // 2
    for r in range(2):
        single = record_single(tmp_path / f"single{r}", rank_seed(cfg.seed, r), cfg.meta_batch // 2,
                               classifier_config(tmp_path).batch // 2, sentence_task()[0].meta_batch // 2)
        assert single.keys() == ranks[r].keys()
        assert [k for k in single if not torch.equal(single[k], ranks[r][k])] == [], r


class Dropped(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.lin(self.drop(x))


def dropout_task():
    """A task whose loss draws dropout masks from the global torch RNG (as the PTB models do)."""
    from matchnet.engine import FunctionTask

    torch.manual_seed(0)
    model = Dropped()
    gen = torch.Generator()
    inputs = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(3, (40,), generator=torch.Generator().manual_seed(2))

    def batch(shard):
        return torch.randint(40, (shard.size,), generator=gen)

    def loss(net, idx):
        logits = net(inputs[idx])
        return nn.functional.cross_entropy(logits, labels[idx]), (logits.argmax(-1) == labels[idx]).float().mean()

    return FunctionTask(model, [gen], batch, loss, validate=lambda m: {"val": 0.0}, save=lambda m, f: None,
                        global_batch=8)


def test_the_resume_point_holds_the_global_rng_so_dropout_resumes_exactly(tmp_path):
    from matchnet.config import LoopConfig
    from matchnet.engine import fit

    cfg = LoopConfig(name="drop", steps=6, lr=0.05, val_every=6, log_every=1, checkpoint_every=3, progress=False)
    straight = dropout_task()
    fit(straight, cfg, tmp_path / "a")
    crashed = dropout_task()
    fit(crashed, cfg, tmp_path / "b", stop_after=3)
    torch.manual_seed(1234)  # a new process: the global RNG is wherever it is
    resumed = dropout_task()
    fit(resumed, cfg, tmp_path / "b")
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ptb_dropout_resumes_exactly(tmp_path):
    from matchnet.language.train import train

    cfg, pool = sentence_task(dropout=0.5, steps=4, val_every=4)
    train(cfg, 20, pool, pool, tmp_path / "a")
    train(cfg, 20, pool, pool, tmp_path / "b", stop_after=2)
    torch.manual_seed(99)
    train(cfg, 20, pool, pool, tmp_path / "b")
    a, b = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_another_number_of_processes_reseeds_from_seed_rank_and_step(tmp_path):
    """A 2-rank resume point resumed by one process: the sampler's stream is re-derived from (seed, rank, step),
    so two runs that differ in their seed go on differently (before, both restarted from step + 1)."""
    import matchnet.train as matching

    spawn(tmp_path / "two", "crash")  # 2 of 4 steps on 2 ranks
    states = {}
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}"
        shutil.copytree(tmp_path / "two", run)
        saved = json.loads((run / "train_config.json").read_text())
        (run / "train_config.json").write_text(json.dumps({**saved, "seed": seed, "out_dir": str(run)}))
        tasks: list = []
        real = recording(matching, [], tasks)
        try:
            matching.train(config(run, 4, seed=seed), splits=glyph_splits(), stop_after=0)
        finally:
            matching.fit = real
        states[seed] = tasks[0].generators[0].get_state()
    assert not torch.equal(states[0], states[1])
    from matchnet.distributed import resume_seed
    for seed, state in states.items():
        assert torch.equal(state, torch.Generator().manual_seed(resume_seed(seed, 0, 2, 0)).get_state())


def test_table_under_torchrun_runs_on_rank_0_alone(tmp_path, monkeypatch, capsys):
    from test_engine import cli

    monkeypatch.setenv("RANK", "1")
    monkeypatch.chdir(tmp_path)
    assert cli().main(["table", "omniglot", "--data-root", str(tmp_path / "nodata")]) == 0
    assert "runs on rank 0 alone" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # rank 1 wrote nothing


def test_a_global_batch_that_does_not_split_is_one_error_naming_the_key():
    from matchnet.distributed import Dist
    from matchnet.engine import TrainingError, _shard

    task = dropout_task()
    task.global_batch, task.batch_key = 6, "batch"
    assert _shard(task, Dist(1, 3, 1)).size == 2
    with pytest.raises(TrainingError, match="batch = 6 per step cannot be split evenly over 4 processes"):
        _shard(task, Dist(0, 4, 0))


def test_step_schedule_halves_four_times():
    from matchnet.config import LoopConfig
    from matchnet.engine import learning_rate

    cfg = LoopConfig(steps=100, lr=1.0, schedule="step")
    rates = [learning_rate(cfg, s) for s in range(cfg.steps)]
    assert sorted(set(rates), reverse=True) == [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert [s for s in range(1, 100) if rates[s] != rates[s - 1]] == [20, 40, 60, 80]


def config_classes():
    from matchnet.baselines import ClassifierConfig, FinetuneConfig, MANNConfig, SiameseConfig
    from matchnet.imagenet import tasks as imagenet
    from matchnet.language.train import SentenceConfig
    from matchnet.train import TrainConfig

    special = {"baseline_classifier": ClassifierConfig, "miniimagenet_classifier": ClassifierConfig,
               "baseline_siamese": SiameseConfig, "baseline_mann": MANNConfig, "baseline_finetune": FinetuneConfig,
               "miniimagenet_finetune": FinetuneConfig, "imagenet_classifier": imagenet.ClassifierConfig,
               "imagenet_oracle": imagenet.ClassifierConfig, "imagenet_matchnet": imagenet.MatchingConfig}
    return {p: special.get(p.stem, SentenceConfig if p.stem.startswith("ptb") else TrainConfig)
            for p in sorted((ROOT / "train" / "configs").glob("*.toml"))}


def test_every_shipped_config_loads_and_every_training_config_is_a_loop_config():
    from matchnet.baselines import FinetuneConfig
    from matchnet.config import LoopConfig, config_from_toml

    classes = config_classes()
    assert len(classes) >= 27
    for path, cls in classes.items():
        cfg = config_from_toml(cls, path)
        assert isinstance(cfg, LoopConfig) != (cls is FinetuneConfig), path  # fine-tuning runs no engine loop
        if isinstance(cfg, LoopConfig):
            assert type(cfg).from_toml(path) == cfg


def test_loop_defaults_the_recipes_rely_on_are_unchanged():
    """The loop fields' defaults of every task config as they were before LoopConfig (TOMLs leave most out)."""
    from matchnet.baselines import ClassifierConfig, MANNConfig, SiameseConfig
    from matchnet.language.train import SentenceConfig
    from matchnet.train import TrainConfig

    keys = ("steps", "lr", "weight_decay", "warmup_steps", "val_every", "log_every", "checkpoint_every",
            "grad_clip", "time_limit", "seed", "progress", "schedule", "amp", "sync_bn")
    before = {TrainConfig: (20000, 1e-3, 0.0, 0, 1000, 100, 1000, 0.0, 0.0, 0, True, "cosine", False, False),
              ClassifierConfig: (3200, 1e-3, 0.0, 100, 400, 100, 400, 0.0, 0.0, 0, True, "cosine", False, False),
              SiameseConfig: (3000, 1e-3, 0.0, 100, 500, 100, 500, 0.0, 0.0, 0, True, "cosine", False, False),
              MANNConfig: (20000, 1e-3, 0.0, 100, 2000, 100, 1000, 10.0, 0.0, 0, True, "cosine", False, False),
              SentenceConfig: (5000, 1e-3, 0.0, 100, 500, 500, 500, 0.0, 0.0, 0, True, "cosine", False, False)}
    for cls, values in before.items():
        assert tuple(getattr(cls(), k) for k in keys) == values, cls.__name__


def test_loop_fields_are_checked_for_every_task(tmp_path):
    from matchnet.baselines import SiameseConfig
    from matchnet.config import ConfigError

    with pytest.raises(ConfigError, match="schedule must be one of cosine, step, constant"):
        SiameseConfig.from_dict({"schedule": "linear"})
    with pytest.raises(ConfigError, match="log_every must be at least 1"):
        SiameseConfig.from_dict({"log_every": 0})
