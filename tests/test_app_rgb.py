"""`python app.py --checkpoint ...` serves any checkpoint (issue 12): an RGB 3x84x84 model, trained here for a
few steps on the synthetic colour images (matchnet.data.synthetic), gets upload slots instead of drawing pads,
photo preprocessing (no strokes), the same attention view and the same /classify endpoint; a 1x28x28
checkpoint given the same way keeps the drawing pads. gradio_client against the launched app, offline.
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402  (sets the offline switches before gradio is imported)
import demo  # noqa: E402
from demo.state import Session  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from matchnet import inference as inf  # noqa: E402
from matchnet.checkpoint import load_model  # noqa: E402
from matchnet.data.synthetic import write_synthetic  # noqa: E402
from matchnet.train import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory) -> Path:
    """A synthetic image folder (12 classes x 8) and a 3x84x84 checkpoint trained on it for 24 steps (seconds
    on one CPU thread; hidden = 16 keeps it small). Its run folder holds train_config.json, as real runs do."""
    root = tmp_path_factory.mktemp("rgb")
    write_synthetic(root / "data", "folder", classes=12, per_class=8, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(name="rgb", dataset="folder", split="random", data_root=str(root / "data"),
                          data_options={"image_size": 84, "workers": 1, "cache": False, "progress": False},
                          hidden=16, way=5, shot=1, query=2, steps=24, val_every=24, val_episodes=5,
                          val_tasks=[[2, 1]], val_query=3, log_every=8, checkpoint_every=24, device="cpu",
                          out_dir=str(root / "run"), progress=False))
    finally:
        torch.set_num_threads(threads)
    assert (root / "run" / "final" / "config.json").is_file()
    return root


def components(page) -> list[dict]:
    return page.get_config_file()["components"]


def launched(page) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(page, port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/"


def class_files(root: Path, classes: list[str], first: int, count: int) -> tuple[list[Path], list[str]]:
    files, labels = [], []
    for c in classes:
        paths = sorted((root / "data" / c).glob("img_*"))[first:first + count]
        files += paths
        labels += [c] * len(paths)
    return files, labels


def test_rgb_checkpoint_gets_upload_slots_and_classify(rgb_run):
    page = demo.build_demo(checkpoint=str(rgb_run / "run" / "final"))
    kinds = [c["type"] for c in components(page)]
    assert "imageeditor" not in kinds  # no drawing pads for photos
    buttons = {c["props"].get("label") or c["props"].get("value"): c["props"].get("visible", True)
               for c in components(page) if c["type"] in ("button", "uploadbutton")}
    assert buttons["Upload into slots"] and buttons["Upload queries"]
    assert buttons["Random Omniglot episode"] is False
    url = launched(page)
    try:
        client = Client(url, verbose=False, download_files=False)
        classes = ["class_01", "class_05", "class_09"]
        support, labels = class_files(rgb_run, classes, 0, 1)
        queries, truth = class_files(rgb_run, classes, 4, 3)
        out = client.predict([handle_file(str(p)) for p in support], labels, [handle_file(str(p)) for p in queries],
                             False, api_name="/classify")
        assert out["model"] == "final" and out["classes"] == classes
        assert np.array(out["attention"]).shape == (9, 3) and np.array(out["similarity"]).shape == (9, 3)
        right = sum(p == t for p, t in zip(out["labels"], truth))
        assert right >= 7, (out["labels"], truth)  # chance is 3 of 9; these classes differ in colour and shape
        with pytest.raises(AppError, match="no FCE model"):
            client.predict([handle_file(str(p)) for p in support], labels, [handle_file(str(queries[0]))], True,
                           api_name="/classify")
    finally:
        page.close()


def test_rgb_preprocessing_is_crop_or_stretch_as_trained(rgb_run, tmp_path):
    model = load_model(rgb_run / "run" / "final")
    assert inf.input_shape(model) == (3, 84, 84) and not inf.is_drawing_model(model)
    wide = np.zeros((50, 150, 3), np.uint8)
    wide[:, :50] = (255, 0, 0)  # red | green | blue thirds
    wide[:, 50:100] = (0, 255, 0)
    wide[:, 100:] = (0, 0, 255)
    crop = inf.preprocess_photo(wide, 84, 3, "crop")
    stretch = inf.preprocess_photo(wide, 84, 3, "stretch")
    assert crop.shape == stretch.shape == (3, 84, 84) and crop.dtype == np.float32
    assert crop[1].mean() > 0.95 and crop[0].mean() < 0.05  # the centre square is the green third
    assert 0.3 < stretch[0].mean() < 0.37  # the whole image: a third red
    gray = inf.preprocess_photo(Image.fromarray(np.full((40, 40), 128, np.uint8)), 84, 3)
    np.testing.assert_allclose(gray, 128 / 255, atol=1e-6)  # a grey photo becomes three equal channels
    # The run's train_config.json says how its images were made square (the loaders' default: stretch).
    assert demo.models.load(rgb_run / "run" / "final").resize == "stretch"
    assert demo.models.load(rgb_run / "run" / "final", resize="crop").resize == "crop"


def test_wrong_kind_of_input_gets_the_models_shape(rgb_run):
    """Issue 15: a caller feeding Omniglot-sized arrays to a 3-channel model hears what it expects."""
    model = load_model(rgb_run / "run" / "final")
    with pytest.raises(inf.InputError, match=r"this model expects 3x84x84 images \(RGB 84 px square\); got 1x28x28"):
        inf.EmbeddedSupport(model, np.zeros((2, 28, 28), np.float32), ["a", "b"])
    entry = inf.EmbeddedSupport(model, np.zeros((2, 3, 84, 84), np.float32), ["a", "b"])
    with pytest.raises(inf.InputError, match="this model expects 3x84x84 images"):
        entry.classify(np.zeros((1, 84, 84), np.float32))
    omniglot = inf.load_checkpoint()
    with pytest.raises(inf.InputError, match=r"this model expects 1x28x28 images \(28 px square\); got 3x84x84"):
        inf.EmbeddedSupport(omniglot, np.zeros((2, 3, 84, 84), np.float32), ["a", "b"])


def test_rgb_page_handlers_upload_and_show_attention(rgb_run):
    ui = demo.App(checkpoint=str(rgb_run / "run" / "final"))
    demo.page.build(ui)
    s = Session()
    out = ui.on_load(s)
    assert "Upload 1 image per class" in out[ui.status] and out[ui.results_side]["visible"] is False
    ui.on_shape(2, 1, s)
    support, _ = class_files(rgb_run, ["class_02", "class_07"], 0, 1)
    out = ui.on_upload_support([str(p) for p in support], s)
    assert "complete" in out[ui.slot_title]
    assert out[ui.gallery]["value"][0][0].shape == (84, 84, 3)  # colour thumbnails
    assert "no query yet" in ui.on_classify(None, s)[ui.status]
    queries, _ = class_files(rgb_run, ["class_07"], 5, 1)
    out = ui.on_upload_queries([str(queries[0])], s)
    assert "Prediction: **B**" in out[ui.prediction]
    assert out[ui.attention].count('class="mn-card') == 2


def test_omniglot_checkpoint_by_flag_keeps_the_pads():
    page = demo.build_demo(checkpoint=str(ROOT / "assets" / "omniglot-vinyals"))
    assert [c["type"] for c in components(page)].count("imageeditor") == 2
    compare = next(c for c in components(page) if c["type"] == "checkbox" and "FCE" in str(c["props"].get("label")))
    assert compare["props"].get("visible") is False  # one checkpoint: nothing to compare with
    url = launched(page)
    try:
        examples = inf.list_examples(ROOT / "assets" / "examples" / "omniglot")
        chars = sorted(examples)[:3]
        client = Client(url, verbose=False, download_files=False)
        out = client.predict([handle_file(str(examples[c][0])) for c in chars], chars,
                             [handle_file(str(examples[c][1])) for c in chars], False, api_name="/classify")
        assert out["model"] == "omniglot-vinyals" and out["labels"] == chars
    finally:
        page.close()


def test_a_bad_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["app.py", "--checkpoint", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as stop:
        app.main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("app.py: cannot serve") and "missing" in err and "Traceback" not in err


def test_an_omniglot_checkpoint_at_56_px_gets_pads_and_drawings_at_its_side(tmp_path):
    """An Omniglot model trained at another size (`data_options = {image_size = 56}`) is still a drawing model:
    pads, stroke preprocessing to 56 px (not photo preprocessing, which would hand it paper as ink)."""
    from matchnet.checkpoint import save_model
    from matchnet.model import MatchingNetwork

    torch.manual_seed(0)
    save_model(MatchingNetwork(image_size=56, hidden=16), tmp_path / "m56")
    ui = demo.App(checkpoint=str(tmp_path / "m56"))
    page = demo.page.build(ui)
    assert ui.drawing and [c["type"] for c in components(page)].count("imageeditor") == 2
    s = Session()
    ui.on_random(3, 1, s)
    assert {x.shape for x in s.slots.values()} == {(56, 56)} and s.uploads[0].x.shape == (56, 56)
    canvas = np.full((256, 256), 255, np.uint8)
    canvas[60:200, 120:134] = 0  # one dark stroke on white: ink is the stroke, whatever the size
    x = demo.handlers.read_pad({"composite": canvas}, ui.side)
    assert x.shape == (56, 56) and x[14:42, 26:30].mean() > 0.5 and x[:, :10].max() == 0
    out = ui.on_classify({"composite": canvas}, s)
    assert "Prediction: **" in out[ui.prediction]
