"""matchnet.predict / Predictor and `train/run.py predict` (issue 23): your own images with any checkpoint.

On the shipped Omniglot checkpoint with real test characters (assets/examples/omniglot, never trained on) and
on an RGB 3x84x84 checkpoint trained here for a few steps on synthetic images (test_app_rgb's fixture): the
folder layout, mixed file types, images in memory, one embedding of the support set, the errors naming the
file, and the same answer as the demo's /classify (one implementation of the input rules).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_app_rgb import rgb_run  # noqa: F401 (the fixture: an RGB checkpoint trained on synthetic images)

import matchnet
from matchnet import inference as inf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.handlers import classify_files  # noqa: E402
from demo.models import Served  # noqa: E402
from demo.state import ApiSession  # noqa: E402

EXAMPLES = inf.list_examples(ROOT / "assets" / "examples" / "omniglot")
CHARS = sorted(EXAMPLES)[:5]
RUN = [sys.executable, str(ROOT / "train" / "run.py"), "predict"]


@pytest.fixture(scope="module")
def omniglot():
    return matchnet.load("omniglot-vinyals")


def save_as(src: Path, dest: Path, kind: str) -> Path:
    """The same drawing as another file type: jpg, bmp, RGBA (ink on a transparent sheet) or grey png."""
    gray = np.asarray(Image.open(src).convert("L"))
    if kind == "rgba":
        rgba = np.zeros((*gray.shape, 4), np.uint8)
        rgba[..., 3] = 255 - gray
        img, dest = Image.fromarray(rgba, "RGBA"), dest.with_suffix(".png")
    elif kind == "gray":
        img, dest = Image.fromarray(gray), dest.with_suffix(".png")
    else:
        img, dest = Image.fromarray(gray).convert("RGB"), dest.with_suffix(f".{kind}")
    img.save(dest)
    return dest


def drawing_folders(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """support/<class>/ with one drawing each, in five file types, and queries/ with the next drawing each."""
    support, queries, names = tmp_path / "support", tmp_path / "queries", []
    kinds = ["png", "jpg", "bmp", "rgba", "gray"]
    for i, c in enumerate(CHARS):
        name = c.replace("/", "_")
        names.append(name)
        (support / name).mkdir(parents=True)
        if kinds[i] == "png":
            shutil.copy(EXAMPLES[c][0], support / name / EXAMPLES[c][0].name)
        else:
            save_as(EXAMPLES[c][0], support / name / "drawing", kinds[i])
        queries.mkdir(exist_ok=True)
        save_as(EXAMPLES[c][1], queries / f"q{i}_{name}", kinds[(i + 2) % 5])
    return support, queries, names


def test_a_support_folder_and_a_query_folder_of_mixed_file_types(omniglot, tmp_path):
    support, queries, names = drawing_folders(tmp_path)
    p = matchnet.predict(omniglot, support, queries)
    assert p.classes == names  # the subfolders, sorted by name
    assert p.support == [str(f) for f in sorted(support.glob("*/*"))] and p.support_labels == names
    assert p.queries == [str(f) for f in sorted(queries.glob("*"))]
    assert p.probabilities.shape == (5, 5) and p.attention.shape == p.cosine.shape == (5, 5)
    np.testing.assert_allclose(p.probabilities.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(p.attention.sum(1), 1, atol=1e-5)
    assert sum(label == name for label, name in zip(p.labels, names)) >= 4  # 5-way 1-shot: ~98% when tested
    r = p.record(0)
    assert r["query"] == p.queries[0] and r["label"] == p.labels[0] and list(r["probabilities"]) == names
    assert list(r["attention"]) == p.support and r["most_attended"] == p.support[int(p.attention[0].argmax())]
    assert r["probability"] == pytest.approx(p.probabilities[0].max())
    json.dumps(p.records())  # plain Python throughout


def test_the_same_answer_as_the_demos_classify(omniglot):
    """One implementation: the demo's /classify (classify_files) and predict read and classify alike."""
    support = [EXAMPLES[c][j] for c in CHARS for j in range(2)]
    labels = [c for c in CHARS for _ in range(2)]
    queries = [EXAMPLES[c][3] for c in CHARS]
    demo = classify_files(Served({"base": omniglot}), [str(f) for f in support], labels, [str(f) for f in queries],
                          False, ApiSession())
    p = matchnet.Predictor(omniglot, {c: EXAMPLES[c][:2] for c in CHARS}).predict(queries)
    assert p.to_json() == {k: v for k, v in demo.items() if k not in ("model", "support_cached")}


def test_the_support_set_is_embedded_once(omniglot, monkeypatch):
    calls = []
    embed = omniglot.embed_support
    monkeypatch.setattr(omniglot, "embed_support", lambda *a, **k: calls.append(1) or embed(*a, **k))
    predictor = matchnet.Predictor(omniglot, {c: EXAMPLES[c][0] for c in CHARS}, batch_size=2)
    queries = [EXAMPLES[c][2] for c in CHARS]
    first, second = predictor.predict(queries[:3]), predictor.predict(queries[3:])
    together = predictor.predict(queries)  # three batches of at most 2
    assert len(calls) == 1
    np.testing.assert_allclose(np.concatenate([first.probabilities, second.probabilities]), together.probabilities,
                               atol=1e-6)
    assert first.labels + second.labels == together.labels


def test_images_in_memory(omniglot):
    """PIL images and arrays give what their files give; they are named by class and position."""
    files = {c: EXAMPLES[c][:1] for c in CHARS}
    arrays = {c: [np.asarray(Image.open(EXAMPLES[c][0]).convert("L"))] for c in CHARS}
    queries = [Image.open(EXAMPLES[c][4]) for c in CHARS]
    from_files = matchnet.predict(omniglot, files, [EXAMPLES[c][4] for c in CHARS])
    in_memory = matchnet.predict(omniglot, arrays, queries)
    np.testing.assert_allclose(in_memory.probabilities, from_files.probabilities, atol=1e-6)
    assert in_memory.support[0] == f"{CHARS[0]}[0]" and in_memory.queries == [f"query[{i}]" for i in range(5)]
    one = matchnet.predict("omniglot-vinyals", files, queries[0])  # a name, and one query on its own
    assert one.labels == from_files.labels[:1]
    with pytest.raises(inf.InputError, match=r"a torch tensor \[1, 28, 28\] is not an image: pass an array"):
        matchnet.predict(omniglot, files, torch.zeros(1, 28, 28))


def test_a_mapping_of_folders_is_the_folder_layout(omniglot, tmp_path):
    support, queries, names = drawing_folders(tmp_path)
    by_folder = matchnet.predict(omniglot, support, queries)
    by_mapping = matchnet.predict(omniglot, {n: support / n for n in reversed(names)}, queries)
    assert by_mapping.classes == names[::-1]  # a mapping keeps its own order
    np.testing.assert_allclose(by_mapping.probabilities[:, ::-1], by_folder.probabilities, atol=1e-6)


def bad_case(tmp_path: Path, case: str) -> tuple[Path, list[Path], str]:
    support, queries, names = drawing_folders(tmp_path)
    query_list = sorted(queries.glob("*"))
    if case == "text file as a png":
        bad = support / names[2] / "notes.png"
        bad.write_text("not an image")
        return support, query_list, rf"support image 4 \({bad}\): not an image"
    if case == "blank query":
        bad = queries / "blank.png"
        Image.new("L", (64, 64), 255).save(bad)
        return support, [query_list[0], bad], rf"query image 2 \({bad}\): blank image"
    if case == "missing query":
        return support, [tmp_path / "nope.png"], rf"query image 1 \({tmp_path / 'nope.png'}\): no such file"
    if case == "a FIFO as a query":  # refused before it is opened: reading one would wait forever
        os.mkfifo(tmp_path / "pipe.png")
        return support, [tmp_path / "pipe.png"], rf"query image 1 \({tmp_path / 'pipe.png'}\): not a regular file"
    if case == "empty class folder":
        (support / "zzz").mkdir()
        return support, query_list, rf"{support / 'zzz'}: a class folder with no image files"
    if case == "one class":
        for n in names[1:]:
            shutil.rmtree(support / n)
        return support, query_list, "at least 2 classes are needed, got 1"
    if case == "no class folders":
        return queries, query_list, rf"{queries}: no class subfolders \(it holds images, e\.g\. q0_"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["text file as a png", "blank query", "missing query", "a FIFO as a query",
                                  "empty class folder", "one class", "no class folders"])
def test_a_bad_input_is_one_error_naming_the_file(omniglot, tmp_path, case):
    support, queries, message = bad_case(tmp_path, case)
    with pytest.raises(inf.InputError, match=message) as error:
        matchnet.predict(omniglot, support, queries)
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


@pytest.mark.parametrize("support, message", [
    ({"a": 0, "a ": 1}, "class names must be distinct: 'a' appears twice"),
    ({"a": 0, " ": 1}, "every class needs a name"),
    ({"a": [], "b": 1}, "class 'a' has no example"),
    ({"a": 0}, "at least 2 classes are needed, got 1"),
    ([0, 1], r"support: expected a folder \(one subfolder per class\) or a mapping"),
])
def test_a_bad_mapping_is_one_error(omniglot, support, message):
    drawings = [EXAMPLES[CHARS[0]][0], EXAMPLES[CHARS[1]][0]]
    if isinstance(support, dict):
        support = {k: [drawings[i] for i in v] if isinstance(v, list) else drawings[v] for k, v in support.items()}
    with pytest.raises(inf.InputError, match=message):
        matchnet.Predictor(omniglot, support)


def rgb_support(rgb_run: Path, tmp_path: Path, classes: list[str], kinds: list[str]) -> Path:  # noqa: F811
    """support/<class>/ with the class's first image in the given file types (jpg, bmp, RGBA png, grey png)."""
    for c in classes:
        (tmp_path / "support" / c).mkdir(parents=True)
        img = Image.open(sorted((rgb_run / "data" / c).glob("img_*"))[0]).convert("RGB")
        for kind in kinds:
            if kind == "rgba":
                img.convert("RGBA").save(tmp_path / "support" / c / "a_rgba.png")
            elif kind == "gray":
                img.convert("L").save(tmp_path / "support" / c / "a_gray.png")
            else:
                img.save(tmp_path / "support" / c / f"a.{kind}")
    return tmp_path / "support"


def rgb_queries(rgb_run: Path, classes: list[str]) -> tuple[list[Path], list[str]]:  # noqa: F811
    files = [p for c in classes for p in sorted((rgb_run / "data" / c).glob("img_*"))[4:7]]
    return files, [f.parent.name for f in files]


def test_an_rgb_checkpoint_as_trained(rgb_run, tmp_path):  # noqa: F811
    classes = ["class_01", "class_05", "class_09"]
    final = rgb_run / "run" / "final"
    support = rgb_support(rgb_run, tmp_path, classes, ["png"])
    queries, truth = rgb_queries(rgb_run, classes)
    predictor = matchnet.Predictor(str(final), support)
    assert predictor.resize == "stretch"  # what the run's train_config.json says (the loaders' default)
    p = predictor.predict(queries)
    assert p.classes == classes and p.probabilities.shape == (9, 3)
    assert sum(a == b for a, b in zip(p.labels, truth)) >= 7  # chance is 3 of 9; the classes differ in colour
    # the demo serving the same checkpoint answers the same
    demo = classify_files(Served({"base": predictor.model}, resize="stretch"),
                          [str(f) for f in sorted(support.glob("*/*"))], classes, [str(f) for f in queries],
                          False, ApiSession())
    assert p.to_json() == {k: v for k, v in demo.items() if k not in ("model", "support_cached")}
    # a copy without its run record does not know: the demo's default, crop
    shutil.copytree(final, tmp_path / "copy")
    assert matchnet.Predictor(tmp_path / "copy", support).resize == "crop"


def test_an_rgb_checkpoint_takes_mixed_file_types(rgb_run, tmp_path):  # noqa: F811
    classes = ["class_02", "class_07"]
    support = rgb_support(rgb_run, tmp_path, classes, ["jpg", "bmp", "rgba", "gray"])
    p = matchnet.predict(rgb_run / "run" / "final", support, rgb_queries(rgb_run, classes)[0])
    assert len(p.support) == 8 and p.support_labels == [c for c in classes for _ in range(4)]
    assert p.attention.shape == (6, 8)


# ------------------------------------------------------------------------------------------------ the CLI

def test_cli_table_and_json(omniglot, tmp_path):
    support, queries, names = drawing_folders(tmp_path)
    table = subprocess.run(RUN + ["--checkpoint", "omniglot-vinyals", "--support", str(support), "--query",
                                  str(queries)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["query", "prediction", "probability", "most", "attended", "support", "image"]
    expected = matchnet.predict(omniglot, support, queries)
    for line, i in zip(lines[1:], range(len(expected))):
        assert line.split() == [expected.queries[i], expected.labels[i], f"{expected.probabilities[i].max():.3f}",
                                expected.record(i)["most_attended"]]
    assert len(lines) == 6 and table.stderr == ""  # five queries: no progress bar
    out = subprocess.run(RUN + ["--support", str(support), "--query", *[str(q) for q in sorted(queries.glob("*"))],
                                "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["query"] for r in records] == expected.queries and [r["label"] for r in records] == expected.labels
    for r, want in zip(records, expected.records()):
        assert r["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
        assert r["attention"] == pytest.approx(want["attention"], abs=1e-6)


def test_cli_bad_input_is_one_line_and_many_queries_get_a_progress_bar(tmp_path):
    support, queries, _ = drawing_folders(tmp_path)
    (tmp_path / "bad.png").write_text("not an image")
    out = subprocess.run(RUN + ["--support", str(support), "--query", str(queries), str(tmp_path / "bad.png")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"error: query image 6 ({tmp_path / 'bad.png'}): not an image (PNG, JPEG, GIF, BMP, " \
                         "WebP or TIFF expected)\n"
    many = [str(q) for q in sorted(queries.glob("*"))] * 7  # 35 queries
    out = subprocess.run(RUN + ["--support", str(support), "--query", *many, "--json"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 35
    assert "predict:" in out.stderr and "/35" in out.stderr


def test_cli_help_imports_no_torch():
    code = ("import runpy, sys\nsys.argv = ['train/run.py', 'predict', '--help']\n"
            "try:\n    runpy.run_path('train/run.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "--support DIR" in out.stdout and "--query FILE_OR_DIR" in out.stdout
    assert out.stdout.splitlines()[-1] == "False"
