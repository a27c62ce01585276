"""Table 3's ImageNet pipeline at tiny scale on the CPU: the class-split files, the ILSVRC layouts, the streams,
both training stages through the engine (one process and 2 gloo processes) and `table imagenet` end to end on a
synthetic ILSVRC-2012 layout made in tmp_path."""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from matchnet.imagenet import splits
from matchnet.imagenet.data import (EpisodeStream, ImageNetError, ImageStream, ShardSampler, devkit_val_labels,
                                    train_files, val_files)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "train"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagenet_worker  # noqa: E402

# -- the split files ------------------------------------------------------------------------------------------


def test_split_files_hold_the_1000_ilsvrc_classes_and_two_disjoint_splits():
    wnids = list(splits.synsets())
    assert len(wnids) == 1000 == len(set(wnids)) and wnids == sorted(wnids)
    assert splits.synsets()["n02085620"] == "Chihuahua"
    for split, size in (("rand", 111), ("dogs", 118)):
        held, rest = splits.class_split(split)
        assert len(held) == size == len(set(splits.held_out(split)))  # no duplicates
        assert set(held) <= set(wnids) and not set(held) & set(rest) and len(held) + len(rest) == 1000
    # L_dogs is exactly the ILSVRC classes below WordNet's dog in the committed hierarchy
    below_dog = {w for w in wnids if splits.DOG in splits.ancestors(w)}
    assert below_dog == set(splits.held_out("dogs"))
    assert "n02114367" not in below_dog and "n02115641" not in below_dog  # timber wolf, dingo: canines, not dogs
    check = json.loads((splits.FOLDER / "appendix_check.json").read_text())
    assert check["rand"]["kept"] == 111 and check["dogs"]["derived"] == 118
    with pytest.raises(ValueError, match="rand, dogs"):
        splits.held_out("cats")


def test_appendix_entries_are_repaired_only_where_one_synset_fits():
    from build_imagenet_splits import build_rand, one_edit

    ilsvrc = list(splits.synsets())
    assert one_edit("n037792972", "n03792972") and one_edit("n04411975", "n04141975")  # extra digit; swap
    assert not one_edit("n02097319", "n02097209")  # two digits differ: not one edit
    kept, log = build_rand(["n03792972", "n0210388", "n02101388", "n040909263", "n02097319"], ilsvrc)
    status = {e["entry"]: e["status"] for e in log}
    # n0210388's only fit (n02101388) is already listed: dropped, not duplicated; n02097319 fits nothing
    assert kept == ["n03792972", "n02101388", "n04090263"]
    assert status == {"n0210388": "dropped", "n040909263": "repaired", "n02097319": "dropped"}


# -- a synthetic ILSVRC-2012 layout ------------------------------------------------------------------------------

def pick_classes() -> dict[str, list[str]]:
    rand = [w for w in splits.held_out("rand") if w not in splits.held_out("dogs")][:6]
    dogs = [w for w in splits.held_out("dogs") if w not in splits.held_out("rand")][:6]
    other = [w for w in splits.synsets() if w not in rand + dogs and w not in splits.held_out("rand")
             and w not in splits.held_out("dogs")][::97][:8]
    return {"rand": rand, "dogs": dogs, "other": other}


def make_imagenet(root: Path, val_layout: str = "folders", train_per_class: int = 14, val_per_class: int = 17,
                  bad: bool = True) -> Path:
    """train/<wnid>/*.JPEG and val/ (class folders, or flat + LOC_val_solution.csv); each class a colour and a
    stripe direction, each image with noise; one unreadable JPEG in train/ when `bad`."""
    rng = np.random.default_rng(0)
    classes = [w for ws in pick_classes().values() for w in ws]
    rows = ["ImageId,PredictionString"]
    for c, wnid in enumerate(classes):
        colour = rng.integers(0, 256, 3)
        for part, n in (("train", train_per_class), ("val", val_per_class)):
            for i in range(n):
                yy, xx = np.mgrid[0:40, 0:40]
                stripes = ((xx if c % 2 else yy) // (2 + c % 4) % 2)[..., None] * 60
                img = np.clip(colour + stripes + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
                if part == "train":
                    path = root / "train" / wnid / f"{wnid}_{i}.JPEG"
                elif val_layout == "folders":
                    path = root / "val" / wnid / f"ILSVRC2012_val_{c * 100 + i:08d}.JPEG"
                else:
                    path = root / "val" / f"ILSVRC2012_val_{c * 100 + i:08d}.JPEG"
                    rows.append(f"{path.stem},{wnid} 1 1 30 30")
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(path, quality=90)
    if val_layout == "flat":
        (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    if bad:
        (root / "train" / classes[0] / f"{classes[0]}_broken.JPEG").write_bytes(b"not a jpeg at all")
    return root


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    return make_imagenet(tmp_path_factory.mktemp("ilsvrc"))


def test_both_val_layouts_give_the_same_classes_and_labels(imagenet, tmp_path):
    flat = make_imagenet(tmp_path / "flat", val_layout="flat", train_per_class=1, bad=False)
    a, b = val_files(imagenet), val_files(flat)
    assert list(a) == list(b) == sorted(a) and len(a) == 20
    assert {c: [p.name for p in fs] for c, fs in a.items()} == {c: [p.name for p in fs] for c, fs in b.items()}
    truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("2\n1\n")  # the devkit's ids (meta.mat maps them to wnids; here given directly)
    assert devkit_val_labels(truth, {1: "n01440764", 2: "n01443537"}) == {
        "ILSVRC2012_val_00000001": "n01443537", "ILSVRC2012_val_00000002": "n01440764"}
    (flat / "LOC_val_solution.csv").write_text("id,labels\n")
    with pytest.raises(ImageNetError, match="LOC_val_solution.csv: expected the header"):
        val_files(flat)
    with pytest.raises(ImageNetError, match="no ImageNet train folder"):
        train_files(tmp_path / "nowhere")


def test_ranks_take_disjoint_shards_and_a_stream_restarts_where_it_stopped():
    take = lambda s, k: [x for _, x in zip(range(k), s)]  # noqa: E731
    r0, r1 = take(ShardSampler(10, 3, 0, 2), 5), take(ShardSampler(10, 3, 1, 2), 5)
    assert sorted(r0 + r1) == list(range(10))  # one epoch, split between the ranks
    assert take(ShardSampler(10, 3, 0, 2), 9)[4:] == take(ShardSampler(10, 3, 0, 2, start=4), 5)
    assert take(ShardSampler(10, 3, 0, 1), 20)[10:] != take(ShardSampler(10, 3, 0, 1), 10)  # a new epoch order


def test_image_stream_decodes_in_workers_names_a_bad_file_and_resumes(imagenet, capfd):
    files = train_files(imagenet)
    classes = list(files)
    stream = ImageStream(files, classes, 32, 16, 0, 0, 1, 2, torch.device("cpu"))
    batches = [stream.next(step) for step in range(18)]  # 288 draws: a whole epoch of 281 files, the bad one among them
    err = [ln for ln in capfd.readouterr().err.splitlines() if "unreadable" in ln]
    assert len(err) == 1 and "_broken.JPEG" in err[0]  # named once, however often it is drawn
    assert 18 * 16 - 2 <= sum(len(b[1]) for b in batches) < 18 * 16  # its batches were one image short
    images, labels = batches[0]
    assert images.shape[1:] == (3, 32, 32) and 0 <= images.min() and images.max() <= 1
    # a resumed run (the engine asks for step 5) goes on with batch 5, here decoded without workers: the
    # stream is a function of (seed, rank, world, step) alone
    fresh = ImageStream(files, classes, 32, 16, 0, 0, 1, 0, torch.device("cpu"))
    images5, labels5 = fresh.next(5)
    assert torch.equal(labels5, batches[5][1]) and torch.allclose(images5, batches[5][0])


def test_episodes_are_fixed_by_seed_rank_and_position(imagenet):
    files = {c: fs for c, fs in train_files(imagenet).items() if "broken" not in str(fs)}
    make = lambda rank: EpisodeStream(files, 5, 1, 3, 32, 2, 0, rank, 2, 0, torch.device("cpu"))  # noqa: E731
    a, b, other = make(0), make(0), make(1)
    ea, eb, eo = a.next(0), b.next(0), other.next(0)
    assert ea.support.shape == (2, 5, 3, 32, 32) and ea.query.shape == (2, 15, 3, 32, 32)
    assert ea.support_labels[0].tolist() == [0, 1, 2, 3, 4] and ea.query_labels[0].tolist() == [0] * 3 + [1] * 3 + \
        [2] * 3 + [3] * 3 + [4] * 3
    assert torch.equal(ea.support, eb.support) and not torch.equal(ea.classes, eo.classes)


def test_oracle_reads_its_logits_of_the_episode_classes():
    from matchnet.imagenet.evaluate import oracle_accuracy

    ids = torch.tensor([3, 0, 4, 1, 2, 5])
    logits = torch.zeros(6, 16, 8)
    logits[torch.arange(6), :, ids] = 1.0  # every image scores its own class highest
    assert oracle_accuracy(logits, ids, 5, 1, 15, 20, 0).mean == 100.0
    assert oracle_accuracy(logits, ids.roll(1), 5, 1, 15, 20, 0).mean < 30  # wrong ids: about chance (ties)


# -- the stages and the table ---------------------------------------------------------------------------------

TINY = ("arch=tiny hidden=8 image_size=32 workers=0 val_per_class=4 val_episodes=10 val_every=3 log_every=1 "
        "checkpoint_every=3 warmup_steps=0 progress=false lr=0.005")


def tiny_sets() -> str:
    parts = {"classifier": TINY + " steps=6 batch=16", "oracle": TINY + " steps=6 batch=16",
             "matchnet": TINY + " steps=4 meta_batch=2 query=3"}
    items = [f"{p}.{kv}" for p, opts in parts.items() for kv in opts.split()]
    return " ".join(items + ["data.subset=true", "eval.workers=0", "eval.pixels=8"])


def run_table(imagenet: Path, tmp_path: Path, split: str, monkeypatch) -> int:
    import run

    monkeypatch.setenv("TABLE_SET", tiny_sets())
    monkeypatch.setenv("TABLE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TABLE_OUT", str(tmp_path / "out"))
    monkeypatch.setattr("matchnet.results.write_results_md", lambda root: None)  # never the tracked docs
    return run.main(["table", "imagenet", "--split", split, "--data-root", str(imagenet), "--device", "cpu",
                     "--episodes", "40"])


def test_table_imagenet_runs_end_to_end_and_writes_its_section(imagenet, tmp_path, monkeypatch, capfd):
    assert run_table(imagenet, tmp_path, "rand", monkeypatch) == 0
    rows = {r["row"]: r for r in json.loads((tmp_path / "out" / "imagenet_table.json").read_text())["rows"]}
    assert set(rows) == {f"rand:{k}" for k in ("pixels", "classifier", "matchnet-fce", "oracle")}
    for r in rows.values():
        assert set(r["accuracy"]) == {"L", "notL"} and r["classes"] == {"L": 6, "notL": 14}
        assert all(0 <= a["mean"] <= 100 and a["ci95"] >= 0 for a in r["accuracy"].values())
    runs = tmp_path / "runs"
    for name in ("imagenet-rand-classifier", "imagenet-rand-matchnet-fce", "imagenet-oracle"):
        assert (runs / name / "final" / "model.safetensors").is_file()
    meta = json.loads((runs / "imagenet-rand-matchnet-fce" / "best" / "config.json").read_text())
    assert meta["config"]["classifier"].endswith("imagenet-rand-classifier/best") and meta["config"]["fce"]
    classifier = json.loads((runs / "imagenet-rand-classifier" / "best" / "config.json").read_text())
    assert not set(classifier["config"]["classes"]) & set(splits.held_out("rand"))  # trained on ≠L only
    md = (tmp_path / "out" / "imagenet_table.md").read_text()
    assert "*(93.2)*" in md and "not measured here *(58.8)*" in md  # dogs columns: not run
    assert "_broken.JPEG" in capfd.readouterr().err
    # the dogs split trains its own classifier and Matching Net, and reuses the finished Oracle
    before = (runs / "imagenet-oracle" / "run.json").stat().st_mtime_ns
    assert run_table(imagenet, tmp_path, "dogs", monkeypatch) == 0
    assert (runs / "imagenet-oracle" / "run.json").stat().st_mtime_ns == before
    rows = json.loads((tmp_path / "out" / "imagenet_table.json").read_text())["rows"]
    assert len(rows) == 8 and "not measured here *(" not in (tmp_path / "out" / "imagenet_table.md").read_text()


def test_table_imagenet_on_two_gloo_processes(imagenet, tmp_path):
    env = {"TABLE_SET": tiny_sets(), "TABLE_RUNS": str(tmp_path / "runs"), "TABLE_OUT": str(tmp_path / "out")}
    argv = ["table", "imagenet", "--split", "dogs", "--data-root", str(imagenet), "--device", "cpu",
            "--episodes", "40"]
    mp.spawn(imagenet_worker.run_table, args=(2, free_port(), env, argv), nprocs=2, join=True)
    rows = json.loads((tmp_path / "out" / "imagenet_table.json").read_text())["rows"]
    assert [r["row"] for r in rows] == [f"dogs:{k}" for k in ("pixels", "classifier", "matchnet-fce", "oracle")]
    assert all(r["world_size"] == 2 and set(r["accuracy"]) == {"L", "notL"} for r in rows)
    for name in ("imagenet-dogs-classifier", "imagenet-dogs-matchnet-fce", "imagenet-oracle"):
        assert json.loads((tmp_path / "runs" / name / "run.json").read_text())["world_size"] == 2


def test_a_bad_data_root_is_one_line(tmp_path, monkeypatch, capsys):
    assert run_table(tmp_path / "missing", tmp_path, "rand", monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no ImageNet train folder") and "--data-root" in err[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_classifier_stage_on_two_gloo_processes_resumes(imagenet, tmp_path):
    classes = [w for ws in pick_classes().values() for w in ws][:10]
    out = tmp_path / "ddp"
    mp.spawn(imagenet_worker.run, args=(2, free_port(), str(imagenet), str(out), classes, 2), nprocs=2, join=True)
    info = json.loads((out / "run.json").read_text())
    assert info["steps"] == 2 and info["world_size"] == 2 and not (out / "final").exists()
    mp.spawn(imagenet_worker.run, args=(2, free_port(), str(imagenet), str(out), classes, None), nprocs=2, join=True)
    info = json.loads((out / "run.json").read_text())
    assert info["steps"] == 4 and info["first_step_this_session"] == 3 and (out / "final" / "config.json").is_file()
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and "val_5w1s" in log[1]


def test_local_weights_load_from_safetensors_only(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    from matchnet.imagenet.backbones import Classifier, load_local_weights

    net = torchvision.models.resnet50(weights=None)  # a torchvision state dict, as a user would convert one
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "r50.safetensors"))
    model = Classifier("resnet50", 889)  # ≠L_rand's classes: the 1,000-way head does not fit and is left
    assert load_local_weights(model, tmp_path / "r50.safetensors") == ["head.bias", "head.weight"]
    assert torch.equal(model.backbone.body.conv1.weight, net.conv1.weight)
    (tmp_path / "r50.pth").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="never unpickles"):
        load_local_weights(model, tmp_path / "r50.pth")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no weight fits the resnet50 backbone"):
        load_local_weights(model, tmp_path / "other.safetensors")
