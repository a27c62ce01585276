"""Natural images: miniImageNet's two layouts, any image folder, the decode cache, bad files, per-channel
normalisation, RGB checkpoints, and training through the CLI on a synthetic colour dataset (no network, no
natural images: matchnet.data.synthetic draws them)."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from matchnet.checkpoint import load_model, model_kwargs, save_model
from matchnet.data import DatasetNotFoundError, load_splits
from matchnet.data import image_cache
from matchnet.data.decode import decode_image
from matchnet.data.fewshot import FewShotSplit
from matchnet.data.miniimagenet import read_ravi_csv
from matchnet.data.synthetic import write_synthetic
from matchnet.model import MatchingNetwork

ROOT = Path(__file__).resolve().parents[1]
RAVI = [ROOT / "data" / "miniimagenet" / "splits" / "ravi",
        ROOT.parent / "shared" / "data" / "miniimagenet" / "splits" / "ravi"]
QUIET = {"workers": 1, "progress": False}  # one process: the test files are tiny
SIZE = 32


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    """The same 20 classes x 30 images in each layout: 10 train / 5 val / 5 test classes."""
    base = tmp_path_factory.mktemp("synthetic")
    return {layout: write_synthetic(base / layout, layout, parts=(10, 5, 5)) for layout in ("csv", "splits", "folder")}


def fresh(src: Path, dst: Path) -> Path:
    """A copy without any cache (tests that damage files work on their own copy)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("matchnet_cache_*"))
    return dst


# -- layouts --------------------------------------------------------------------------------------------------

def test_both_miniimagenet_layouts_give_the_same_splits(synthetic):
    a = load_splits("miniimagenet", "ravi", str(synthetic["csv"]), image_size=SIZE, **QUIET)
    b = load_splits("miniimagenet", "ravi", str(synthetic["splits"]), image_size=SIZE, workers=2, progress=False)
    for p in ("train", "val", "test", "trainval"):
        assert a[p].names == b[p].names
        assert torch.equal(a[p].images[a[p].source], b[p].images[b[p].source])  # the parallel decode agrees
    assert [a[p].num_classes for p in ("train", "val", "test", "trainval")] == [10, 5, 5, 15]
    assert a["train"].images.shape == (20, 30, 3, SIZE, SIZE) and a["train"].images.dtype == torch.uint8
    assert not set(a["train"].names) & set(a["test"].names)
    assert a["train"].mean == b["train"].mean and a["test"].mean == a["train"].mean


def test_mean_and_std_come_from_the_training_classes_only(synthetic):
    s = load_splits("miniimagenet", "ravi", str(synthetic["csv"]), image_size=SIZE, **QUIET)
    train = s["train"].images[s["train"].source].double() / 255  # [classes, per_class, 3, H, W]
    mean = train.mean(dim=(0, 1, 3, 4))
    std = train.permute(2, 0, 1, 3, 4).flatten(1).std(unbiased=False, dim=1)
    assert np.allclose(s["train"].mean, mean.numpy(), atol=1e-5) and np.allclose(s["train"].std, std.numpy(), atol=1e-5)
    test = s["test"].images[s["test"].source].double().mean(dim=(0, 1, 3, 4)) / 255
    assert not np.allclose(s["test"].mean, test.numpy(), atol=1e-3)  # the test classes' own mean is not used
    moved = s["val"].to("cpu")
    assert moved.mean == s["val"].mean and moved.std == s["val"].std


def test_any_image_folder_by_seeded_proportion_or_by_lists(synthetic):
    root = str(synthetic["folder"])
    a = load_splits("folder", "random", root, image_size=SIZE, proportions=[0.5, 0.25, 0.25], seed=3, **QUIET)
    b = load_splits("folder", "random", root, image_size=SIZE, proportions=[0.5, 0.25, 0.25], seed=3, **QUIET)
    c = load_splits("folder", "random", root, image_size=SIZE, proportions=[0.5, 0.25, 0.25], seed=4, **QUIET)
    assert [a[p].num_classes for p in ("train", "val", "test")] == [10, 5, 5]
    assert a["test"].names == b["test"].names and a["test"].names != c["test"].names
    assert sorted(a["train"].names + a["val"].names + a["test"].names) == [f"class_{i:02d}" for i in range(20)]
    lists = {"train_classes": [f"class_{i:02d}" for i in range(12)],
             "val_classes": [f"class_{i:02d}" for i in range(12, 16)], "test_classes": ["class_16", "class_17"]}
    d = load_splits("folder", "lists", root, image_size=SIZE, **lists, **QUIET)
    assert d["test"].names == ["class_16", "class_17"] and d["val"].num_classes == 4
    assert d["train"].images.shape[0] == 18  # classes in no list are not decoded


def test_unknown_or_wrong_options_and_splits_are_one_clear_error(synthetic):
    root = str(synthetic["csv"])
    with pytest.raises(ValueError, match="unknown data option.*'imagesize'"):
        load_splits("miniimagenet", "ravi", root, imagesize=84)
    with pytest.raises(ValueError, match="image_size should be int"):
        load_splits("miniimagenet", "ravi", root, image_size="84")
    with pytest.raises(ValueError, match="unknown data option.*'proportions'.*omniglot"):
        load_splits("omniglot", "vinyals", root, proportions=[1, 1, 1])
    with pytest.raises(ValueError, match="ravi"):
        load_splits("miniimagenet", "vinyals", root)
    with pytest.raises(ValueError, match="'random'.*'lists'"):
        load_splits("folder", "ravi", str(synthetic["folder"]))
    with pytest.raises(ValueError, match="missing.*test_classes"):
        load_splits("folder", "lists", str(synthetic["folder"]), train_classes=["class_00"], val_classes=["class_01"])
    with pytest.raises(ValueError, match="class_99"):
        load_splits("folder", "lists", str(synthetic["folder"]), train_classes=["class_99"], val_classes=["class_01"],
                    test_classes=["class_02"])
    with pytest.raises(ValueError, match="choose one of omniglot, miniimagenet, folder"):
        load_splits("imagenet", "ravi", root)


# -- the cache ------------------------------------------------------------------------------------------------

def test_decoded_once_then_memory_mapped_and_rebuilt_when_a_file_changes(synthetic, tmp_path, monkeypatch):
    root = fresh(synthetic["csv"], tmp_path / "mini")
    first = load_splits("miniimagenet", "ravi", str(root), image_size=SIZE, **QUIET)
    assert len(list(root.glob("matchnet_cache_miniimagenet_32.*.npy"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(image_cache, "decode_image", no_decoding)
    again = load_splits("miniimagenet", "ravi", str(root), image_size=SIZE, **QUIET)
    assert torch.equal(first["train"].images, again["train"].images)
    assert mapped_from(again["train"].images, next(root.glob("*.npy")))  # a view of the file, not a copy
    monkeypatch.undo()
    victim = next((root / "images").glob("*.jpg"))
    Image.new("RGB", (84, 84), (255, 0, 0)).save(victim)  # replaced: the cache no longer describes the files
    changed = load_splits("miniimagenet", "ravi", str(root), image_size=SIZE, **QUIET)
    assert not torch.equal(first["train"].images, changed["train"].images)
    assert len(list(root.glob("matchnet_cache_miniimagenet_32.*.npy"))) == 1  # the stale gigabyte is removed


def mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    """Whether the tensor's memory is a mapping of `path` (Linux: /proc/self/maps)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("no /proc/self/maps to check memory mappings on this system")
    for line in maps.read_text().splitlines():
        if line.endswith(str(path.resolve())):
            start, end = (int(v, 16) for v in line.split()[0].split("-"))
            if start <= tensor.data_ptr() < end:
                return True
    return False


def test_an_unwritable_cache_place_falls_back_to_the_next(synthetic, tmp_path, monkeypatch):
    """The big file tries beside the data, then the user cache (matchnet.data.cache.cache_paths); here the first
    place cannot be created (its parent is a file), as in a read-only data folder (root may write even there)."""
    root = fresh(synthetic["splits"], tmp_path / "data")
    (tmp_path / "a_file").write_text("x")
    places = lambda base, name: [tmp_path / "a_file" / name, tmp_path / "user" / name]  # noqa: E731
    monkeypatch.setattr(image_cache, "cache_paths", places)
    first = load_splits("miniimagenet", "ravi", str(root), image_size=SIZE, **QUIET)
    assert len(list((tmp_path / "user").glob("*.npy"))) == 1 and not list(root.glob("*.npy"))
    monkeypatch.setattr(image_cache, "decode_image", lambda *a: pytest.fail("decoded again"))
    again = load_splits("miniimagenet", "ravi", str(root), image_size=SIZE, **QUIET)
    assert torch.equal(first["test"].images, again["test"].images)


# -- bad data -------------------------------------------------------------------------------------------------

def test_a_missing_image_named_by_the_csv_is_named_before_any_decoding(synthetic, tmp_path):
    root = fresh(synthetic["csv"], tmp_path / "mini")
    gone = sorted((root / "images").glob("*.jpg"))[40]
    gone.unlink()
    with pytest.raises(DatasetNotFoundError, match=f"1 image.*missing.*images/{gone.name}"):
        load_splits("miniimagenet", "ravi", str(root), image_size=SIZE, **QUIET)


def test_corrupt_and_non_rgb_images_are_skipped_or_converted_with_a_count(synthetic, tmp_path, capsys):
    root = fresh(synthetic["folder"], tmp_path / "folder")
    (root / "class_03" / "img_0001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = root / "class_04" / "img_0002.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    Image.open(root / "class_05" / "img_0004.jpg").convert("L").save(root / "class_05" / "img_0004.jpg")
    Image.open(root / "class_06" / "img_0005.jpg").convert("CMYK").save(root / "class_06" / "img_0005.jpg")
    (root / "class_07" / "notes.txt").write_text("not an image, ignored")
    s = load_splits("folder", "random", str(root), image_size=SIZE, proportions=[0.5, 0.25, 0.25], **QUIET)
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image(s)" in err and "class_03/img_0001.jpg" in err and "class_04/img_0002.jpg" in err
    assert "converted non-RGB images to RGB" in err and "1 CMYK" in err and "1 L" in err
    assert s["train"].per_class == 29  # every class keeps as many as the smallest class has readable
    assert "every class uses 29" in err


def test_small_and_empty_classes_are_named(synthetic, tmp_path, capsys):
    root = fresh(synthetic["folder"], tmp_path / "folder")
    for f in sorted((root / "class_08").iterdir())[3:]:
        f.unlink()
    (root / "empty_class").mkdir()
    s = load_splits("folder", "random", str(root), image_size=SIZE, proportions=[0.5, 0.25, 0.25], **QUIET)
    err = capsys.readouterr().err
    assert "empty_class" in err and "no image files" in err
    assert s["train"].per_class == 3 and "smallest: 'class_08' with 3" in err
    capped = load_splits("folder", "random", str(root), image_size=SIZE, proportions=[0.5, 0.25, 0.25],
                         per_class=20, **QUIET)
    err = capsys.readouterr().err
    assert "left out 1 class(es) with fewer than per_class = 20" in err and "class_08 (3)" in err
    assert capped["train"].per_class == 20
    assert "class_08" not in capped["train"].names + capped["val"].names + capped["test"].names


def test_missing_or_empty_data_folders_say_what_layout_is_expected(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="images/\\*.jpg with train.csv.*class folders"):
        load_splits("miniimagenet", "ravi", str(tmp_path))
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no train.csv, val.csv and test.csv"):
        load_splits("miniimagenet", "ravi", str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no class folders with images"):
        load_splits("folder", "random", str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFoundError, match="cannot be downloaded"):
        load_splits("miniimagenet", "ravi", str(tmp_path), download=True)


def ravi_dir() -> Path | None:
    return next((d for d in RAVI if (d / "train.csv").is_file()), None)


def test_ravis_split_files_are_64_16_20_classes_of_600():
    folder = ravi_dir()
    if folder is None:
        pytest.skip("Ravi's split CSVs are not in data/ or ../shared/data")
    parts = {p: read_ravi_csv(folder / f"{p}.csv") for p in ("train", "val", "test")}
    assert [len(parts[p]) for p in ("train", "val", "test")] == [64, 16, 20]
    assert all(len(v) == 600 for t in parts.values() for v in t.values())
    assert not (set(parts["train"]) & set(parts["val"]) or set(parts["train"]) & set(parts["test"]))


def test_ravis_csvs_without_the_images_name_the_first_missing_file(tmp_path):
    folder = ravi_dir()
    if folder is None:
        pytest.skip("Ravi's split CSVs are not in data/ or ../shared/data")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetNotFoundError, match="60000 image.*missing.*images/n0153282900000005.jpg"):
        load_splits("miniimagenet", "ravi", str(tmp_path), csv_dir=str(folder))


@contextlib.contextmanager
def no_hang(seconds: int = 30):
    """Reading a FIFO blocks forever: this turns such a hang into a failure instead of a stuck suite."""
    def stuck(*_):
        raise AssertionError("blocked on a FIFO")
    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def fifo_in_place_of(image: Path) -> Path:
    image.unlink()
    os.mkfifo(image)
    return image


def test_a_fifo_named_like_an_image_is_never_opened(synthetic, tmp_path, capsys):
    folder = fresh(synthetic["folder"], tmp_path / "folder")
    fifo = fifo_in_place_of(sorted((folder / "class_02").iterdir())[3])
    with no_hang():
        array, error, _ = decode_image(str(fifo), SIZE, "stretch")
        assert array is None and "not a regular file" in error
        s = load_splits("folder", "random", str(folder), image_size=SIZE, proportions=[0.5, 0.25, 0.25], **QUIET)
    err = capsys.readouterr().err
    assert "not regular files" in err and str(fifo) in err  # left out, with the line naming it
    assert s["train"].per_class == 29  # the class lost one image, so every class keeps 29
    mini = fresh(synthetic["csv"], tmp_path / "mini")
    listed = fifo_in_place_of(sorted((mini / "images").glob("*.jpg"))[5])
    with no_hang(), pytest.raises(DatasetNotFoundError, match=f"images/{listed.name} .*not a regular file"):
        load_splits("miniimagenet", "ravi", str(mini), image_size=SIZE, **QUIET)


@pytest.mark.parametrize("case", ["binary", "NUL", "absolute", "climbs out", "windows drive"])
def test_a_bad_csv_names_the_file_and_the_line(tmp_path, case):
    rows = {"binary": b"n01532829/a.jpg,n01532829\n\xff\xfe\x81garbage,x\n",
            "NUL": b"a.jpg,n01532829\nb.jpg,n0\x00\x00\n",
            "absolute": b"a.jpg,n01532829\n/etc/passwd,n01532829\n",
            "climbs out": b"a.jpg,n01532829\n../../secret.jpg,n01532829\n",
            "windows drive": b"a.jpg,n01532829\nC:\\Users\\x.jpg,n01532829\n"}[case]
    path = tmp_path / "train.csv"
    path.write_bytes(b"filename,label\n" + rows)
    with pytest.raises(DatasetNotFoundError) as info:
        read_ravi_csv(path)
    message = str(info.value)
    assert message.startswith(f"{path} line 3: ") and "\n" not in message
    assert ("binary data" in message) == (case in ("binary", "NUL"))


def test_splits_moved_to_a_device_share_one_copy_of_the_images():
    """FewShotSplit.to copies the dataset tensor once per device, not once per split."""
    images = torch.randint(0, 256, (6, 4, 3, 8, 8), dtype=torch.uint8)
    zeros = torch.zeros(3, dtype=torch.long)
    a = FewShotSplit(images, torch.tensor([0, 1, 2]), zeros, ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3)
    b = FewShotSplit(images, torch.tensor([3, 4, 5]), zeros, ["d", "e", "f"], (0.5,) * 3, (0.25,) * 3)
    for device in ["meta"] + (["cuda"] if torch.cuda.is_available() else []):
        moved_a, moved_b = a.to(device), b.to(device)
        assert moved_a.images is moved_b.images and moved_a.images.device.type == device
        assert a.to(device).images is moved_a.images  # moving the same split again copies nothing either
        assert moved_a.names == a.names and moved_a.mean == a.mean and moved_a.per_class == 4
        if device != "meta":  # real memory: the same storage, the same bytes
            assert moved_a.images.data_ptr() == moved_b.images.data_ptr()
            assert torch.equal(moved_b.images.cpu(), images) and torch.equal(moved_b.source.cpu(), b.source)
            assert torch.equal(moved_b.class_images(1).cpu(), b.class_images(1))
        copy = moved_a.images
        del moved_a, moved_b
        assert a.to(device).images is copy  # held while a split uses it
    assert a.to("cpu").images is images  # already there: no copy


def _rank_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    """One rank of test_under_torchrun_rank_0_alone_decodes: how many images this rank decoded, what it loaded."""
    import torch.distributed as tdist

    tdist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    try:
        decoded = []
        real = image_cache.decode_image
        image_cache.decode_image = lambda *a: decoded.append(a[0]) or real(*a)
        s = load_splits("folder", "random", root, image_size=SIZE, proportions=[0.5, 0.25, 0.25], **QUIET)
        Path(out, f"rank{rank}.json").write_text(json.dumps(
            {"decoded": len(decoded), "sum": int(s["train"].images.long().sum()), "names": s["test"].names}))
    finally:
        tdist.destroy_process_group()


def test_under_torchrun_rank_0_alone_decodes_and_the_others_read_its_cache(synthetic, tmp_path):
    root = fresh(synthetic["folder"], tmp_path / "folder")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_rank_worker, args=(2, port, str(root), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["decoded"] == 600 and r1["decoded"] == 0  # 20 classes x 30 images, decoded once in all
    assert r0["sum"] == r1["sum"] and r0["names"] == r1["names"]
    assert len(list(root.glob("matchnet_cache_folder_*.npy"))) == 1
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary file left by either rank


# -- the model and its checkpoints ----------------------------------------------------------------------------

def test_normalisation_is_inside_the_model_and_saved_with_it(tmp_path):
    torch.manual_seed(0)
    plain = MatchingNetwork().eval()
    x = torch.rand(2, 3, 1, 28, 28)
    assert torch.equal(plain.encode(x), plain.encoder(x.flatten(0, 1)).view(2, 3, -1))  # Omniglot: unchanged
    assert "mean" not in plain.config and "input_mean" not in plain.state_dict()
    rgb = MatchingNetwork(in_channels=3, image_size=84, mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.2]).eval()
    x = torch.rand(1, 4, 3, 84, 84)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.25, 0.2, 0.2]).view(3, 1, 1)
    expected = rgb.encoder(((x - mean) / std).flatten(0, 1)).view(1, 4, -1)
    assert torch.allclose(rgb.encode(x), expected) and expected.shape[-1] == 1600
    save_model(rgb, tmp_path / "rgb")
    config = json.loads((tmp_path / "rgb" / "config.json").read_text())
    assert config["mean"] == [0.5, 0.4, 0.3] and config["in_channels"] == 3
    back = load_model(tmp_path / "rgb")
    assert torch.equal(back.encode(x), rgb.encode(x))
    with pytest.raises(ValueError, match="one value per input channel"):
        MatchingNetwork(in_channels=3, mean=[0.5], std=[0.2])


def test_configs_written_before_mean_and_std_existed_still_load():
    old = json.loads((ROOT / "assets" / "omniglot-vinyals" / "config.json").read_text())
    assert "mean" not in old
    kwargs = model_kwargs(old, Path("config.json"))
    assert "mean" not in kwargs and MatchingNetwork(**kwargs).input_mean is None
    with pytest.raises(Exception, match="unknown keys \\['in_channels_'\\]"):  # a typo is still an error
        model_kwargs(old | {"in_channels_": 1}, Path("c.json"))


def test_an_rgb_checkpoints_card_names_its_dataset_split_and_input(tmp_path):
    """`publish --dry-run` (hub.stage) on a miniImageNet checkpoint: the card says what the model was trained on."""
    from matchnet.hub import stage

    model = MatchingNetwork(in_channels=3, image_size=84, mean=[0.47, 0.45, 0.41], std=[0.28, 0.27, 0.29])
    folder = save_model(model, tmp_path / "miniimagenet-1shot")
    accuracy = {"5w1s": {"mean": 47.5, "ci95": 0.8}, "5w5s": {"mean": 60.1, "ci95": 0.7}}
    (folder / "results.json").write_text(json.dumps({
        "checkpoint": str(folder), "dataset": "miniimagenet", "split": "ravi", "test_classes": 20, "episodes": 1000,
        "seed": 0, "query_per_class": 15, "hardware": "test", "model": model.config, "accuracy": accuracy}))
    files = stage(folder, tmp_path / "staged")
    card = (tmp_path / "staged" / "README.md").read_text()
    assert "Trained on miniImageNet, `ravi` class split" in card and "normalised inside the model" in card
    assert "[episodes, n, 3, 84, 84]" in card and "47.50 ± 0.80" in card and "miniImageNet (ravi split)" in card
    assert "Omniglot" not in card.split("## Citation")[0]  # no Omniglot rows or data paths on this card
    assert load_model(tmp_path / "staged").config["mean"] == [0.47, 0.45, 0.41]
    assert {f.name for f in files} >= {"config.json", "model.safetensors", "README.md", "results.json"}


# -- training through the CLI ---------------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    """Tiny convolutions run far faster on one thread than on two contended ones (the CI machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("matchnet_run_cli", ROOT / "train" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


TRAIN = ["--set", "query=3", "--set", "meta_batch=1", "--set", "hidden=16", "--set", "val_episodes=50",
         "--set", "val_query=5", "--set", "warmup_steps=10", "--set", "scale=10.0", "--set", "progress=false"]


def test_training_through_the_cli_beats_chance_on_held_out_classes(synthetic, tmp_path, one_thread):
    """200 CPU steps with the shipped miniImageNet config (smaller images and net, for time)."""
    from matchnet.evaluate import evaluate

    out = tmp_path / "run"
    code = run_cli(["train", "--config", str(ROOT / "train" / "configs" / "miniimagenet_1shot.toml"),
                    "--device", "cpu", "--data-root", str(synthetic["csv"]), *TRAIN,
                    "--set", "data_options={image_size = 24, workers = 1, progress = false}",
                    "--set", "steps=200", "--set", "val_every=200", "--set", f'out_dir="{out}"'])
    assert code == 0
    model = load_model(out / "best")
    assert model.config["in_channels"] == 3 and model.config["image_size"] == 24 and len(model.config["mean"]) == 3
    cfg = json.loads((out / "train_config.json").read_text())
    splits = load_splits(cfg["dataset"], cfg["split"], cfg["data_root"], **cfg["data_options"])
    assert model.config["mean"] == list(splits["train"].mean)
    acc = evaluate(model, splits["test"], 5, 1, query=5, episodes=200, seed=0, progress=False)
    assert acc.mean > 50, acc  # chance is 20% on these 5 never-seen classes


def test_a_folder_dataset_with_class_lists_trains_through_the_cli(synthetic, tmp_path, one_thread):
    lists = ('train_classes = ["class_00","class_01","class_02","class_03","class_04","class_05"], '
             'val_classes = ["class_10","class_11","class_12","class_13","class_14"], '
             'test_classes = ["class_15","class_16","class_17","class_18","class_19"]')
    out = tmp_path / "run"
    code = run_cli(["train", "--config", str(ROOT / "train" / "configs" / "miniimagenet_1shot.toml"),
                    "--device", "cpu", "--data-root", str(synthetic["folder"]), *TRAIN,
                    "--set", 'dataset="folder"', "--set", 'split="lists"',
                    "--set", f"data_options={{image_size = 16, workers = 1, progress = false, {lists}}}",
                    "--set", "steps=10", "--set", "val_every=10", "--set", f'out_dir="{out}"'])
    assert code == 0
    assert load_model(out / "final").config["image_size"] == 16
    # eval finds the dataset, split and data options in the run's train_config.json, decodes at the model's
    # size, and evaluates the paper's natural-image columns (5-way) on these 5 test classes
    result = tmp_path / "eval.json"
    assert run_cli(["eval", "--checkpoint", str(out / "final"), "--device", "cpu", "--data-root",
                    str(synthetic["folder"]), "--episodes", "20", "--out", str(result)]) == 0
    assert set(json.loads(result.read_text())["accuracy"]) == {"5w1s", "5w5s"}
    bad = run_cli(["train", "--config", str(ROOT / "train" / "configs" / "miniimagenet_1shot.toml"),
                   "--device", "cpu", "--data-root", str(synthetic["folder"]), "--set", 'dataset="folder"',
                   "--set", "data_options={image_sise = 16}", "--set", f'out_dir="{tmp_path / "bad"}"'])
    assert bad == 2  # "error: unknown data option(s) ['image_sise'] ...", one line, no traceback


def test_table_2_runs_end_to_end_on_a_synthetic_set(synthetic, tmp_path, monkeypatch, one_thread):
    """Every row of `train/run.py table miniimagenet`, with tiny models, into a scratch folder (not the docs)."""
    sys.path.insert(0, str(ROOT / "train"))
    import table_miniimagenet

    monkeypatch.setenv("TABLE_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("TABLE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TABLE_SCALES", "5,10")
    monkeypatch.setenv("TABLE_SET", " ".join([
        "data.image_size=16", "data.workers=1", "data.progress=false",
        "classifier.steps=20", "classifier.batch=32", "classifier.hidden=16", "classifier.val_every=20",
        "classifier.val_episodes=20", "classifier.progress=false", "classifier.warmup_steps=2",
        "matchnet.steps=10", "matchnet.hidden=16", "matchnet.query=3", "matchnet.val_every=10",
        "matchnet.val_episodes=20", "matchnet.progress=false", "matchnet.warmup_steps=2",
        "finetune.val_episodes=10", "finetune.lrs=[0.001]", "finetune.steps=[1,2]", "finetune.batch=10"]))
    args = type("Args", (), {"device": "cpu", "data_root": str(synthetic["csv"]), "episodes": 40, "seed": 0})()
    table_miniimagenet.main(args)
    rows = {r["row"]: r for r in json.loads((tmp_path / "out" / "miniimagenet_table.json").read_text())["rows"]}
    assert list(rows) == list(table_miniimagenet.PAPER)
    for r in rows.values():
        assert set(r["accuracy"]) == {"5w1s", "5w5s"} and r["episodes"] == 40
        assert all(0 <= a["mean"] <= 100 and a["ci95"] >= 0 for a in r["accuracy"].values())
    chosen = rows["matchnet-fce"]["models"]["5w5s"]
    assert set(chosen["tried"]) == {"5", "10"} and chosen["scale"] in (5.0, 10.0)
    assert load_model(Path(chosen["tried"]["5"]["folder"])).config["fce"] is True
    md = (tmp_path / "out" / "miniimagenet_table.md").read_text()
    assert "*(46.6)*" in md and "*(60.0)*" in md and f"{rows['pixels']['accuracy']['5w1s']['mean']:.2f}" in md


def test_the_committed_table_2_section_says_what_was_measured():
    md = (ROOT / "docs" / "results" / "miniimagenet_table.md").read_text()
    stored = ROOT / "docs" / "results" / "miniimagenet_table.json"
    if not stored.is_file():  # nothing measured: say so, and no number of ours may appear
        assert "not measured here: no images on the project's machines" in md.lower()
        assert not re.search(r"\d ± \d", md)
