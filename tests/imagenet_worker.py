"""A rank of tests/test_imagenet.py's 2-process gloo run of the ImageNet classifier stage (spawn imports this)."""
from __future__ import annotations

import os


def classifier_config(**kw):
    from matchnet.imagenet.tasks import ClassifierConfig

    base = dict(name="tiny-classifier", arch="tiny", hidden=8, image_size=32, batch=8, steps=4, lr=5e-3,
                workers=0, val_per_class=4, val_episodes=10, val_every=2, log_every=1, checkpoint_every=2,
                device="cpu", progress=False)
    return ClassifierConfig(**{**base, **kw})


def run(rank: int, world: int, port: int, root: str, out: str, classes: list[str], stop_after) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch

    torch.set_num_threads(1)
    from matchnet.distributed import close_distributed, init_distributed
    from matchnet.imagenet.tasks import train_classifier

    init_distributed("cpu")
    try:
        train_classifier(classifier_config(), root, classes, out, resume=True, stop_after=stop_after)
    finally:
        close_distributed()


def run_table(rank: int, world: int, port: int, env: dict, argv: list[str]) -> None:
    """`train/run.py table imagenet ...` as one of `world` torchrun processes."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), **env)
    import torch

    torch.set_num_threads(1)
    import matchnet.results
    import run

    matchnet.results.write_results_md = lambda root: None  # the test's outputs go to TABLE_OUT, never the docs
    assert run.main(argv) == 0
