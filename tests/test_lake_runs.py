"""Lake et al.'s 20 runs (all_runs.zip): the reader, Lake's scoring and `eval --protocol lake-runs`, on synthetic
copies of the layout made here from the conftest Omniglot tree (the real file is not on this machine)."""
from __future__ import annotations

import io
import json
import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch

from matchnet.alphabets import evaluate_lake_runs, wilson95
from matchnet.checkpoint import save_model
from matchnet.data.files import CorruptDataError, DatasetNotFoundError
from matchnet.data.lake_runs import URL, download_lake_runs, lake_runs_path, load_lake_runs
from matchnet.data.omniglot import load_omniglot
from matchnet.model import MatchingNetwork

ROOT = Path(__file__).resolve().parents[1]
WAY, RUNS = 4, 3
# test item j of every run is a copy of training image ORDER[j]: the answers are not the identity
ORDER = [2, 0, 3, 1]


def pngs(tree: Path) -> list[Path]:
    """One drawing (drawer 01) of each character of the conftest tree, in the loader's order."""
    folder = tree / "omniglot-py"
    return [sorted(c.glob("*_01.png"))[0] for part in ("images_background", "images_evaluation")
            for c in sorted((folder / part).glob("*/character*"))]


def make_runs(base: Path, tree: Path, bare_run: str = "run03") -> tuple[Path, list[list[int]]]:
    """base/run01..run03 in Lake's layout; run r uses characters r..r+3 of the tree. class_labels.txt names
    paths as Lake's file does ("run01/test/item01.png ..."), but `bare_run`'s without the run folder. Returns
    the folder and, per run, which tree character each training image is."""
    files, used = pngs(tree), []
    for r in range(1, RUNS + 1):
        run = base / f"run{r:02d}"
        (run / "training").mkdir(parents=True), (run / "test").mkdir()
        chars = list(range(r - 1, r - 1 + WAY))
        lines = []
        for k, c in enumerate(chars):
            shutil.copy(files[c], run / "training" / f"class{k + 1:02d}.png")
        for j, k in enumerate(ORDER):
            shutil.copy(files[chars[k]], run / "test" / f"item{j + 1:02d}.png")
            prefix = "" if run.name == bare_run else f"{run.name}/"
            lines.append(f"{prefix}test/item{j + 1:02d}.png {prefix}training/class{k + 1:02d}.png")
        (run / "class_labels.txt").write_text("\n".join(lines) + "\n")
        used.append(chars)
    return base, used


def zip_folder(folder: Path, target: Path, prefix: str = "") -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return target


@pytest.fixture
def runs_folder(tmp_path, omniglot_tree) -> tuple[Path, list[list[int]]]:
    return make_runs(tmp_path / "data" / "omniglot-py" / "all_runs", omniglot_tree)


def nearest_pixels(ep) -> torch.Tensor:
    """A predictor: minus the squared pixel distance of each query to each support image, [E, Q, N]."""
    return -((ep.query.unsqueeze(2) - ep.support.unsqueeze(1)) ** 2).flatten(3).sum(-1)


# ------------------------------------------------------------------------------------------- the reader

def test_zip_and_folder_read_alike_resized_as_the_omniglot_loader(runs_folder, omniglot_tree, tmp_path):
    folder, used = runs_folder
    data = tmp_path / "data"
    from_folder = load_lake_runs(data)  # DATA_ROOT/omniglot-py/all_runs/
    assert from_folder.source == str(folder)
    zipped = zip_folder(folder, tmp_path / "z" / "all_runs.zip")
    nested = zip_folder(folder, tmp_path / "all_runs.zip", prefix="all_runs/")  # a top folder in the zip
    for other in (load_lake_runs(zipped), load_lake_runs(nested)):
        assert other.names == from_folder.names == ["run01", "run02", "run03"]
        assert torch.equal(other.training, from_folder.training) and torch.equal(other.test, from_folder.test)
        assert torch.equal(other.answers, from_folder.answers)
    assert from_folder.answers.tolist() == [ORDER] * RUNS  # the bare-path run03 reads as the others
    assert from_folder.training_files[0][0] == "training/class01.png"
    assert from_folder.training.shape == (RUNS, WAY, 28, 28) and from_folder.items == RUNS * WAY
    omniglot = load_omniglot(omniglot_tree, strict=False, cache=False)  # the same PNGs through the loader
    for r, chars in enumerate(used):
        assert torch.equal(from_folder.training[r], omniglot.images[chars, 0])
    assert load_lake_runs(data, image_size=14).training.shape[-1] == 14


def test_where_the_runs_are_looked_for(tmp_path):
    nested = tmp_path / "a" / "omniglot" / "omniglot-py"
    (nested / "all_runs" / "run01").mkdir(parents=True)
    (nested / "all_runs" / "run01" / "class_labels.txt").write_text("")
    assert lake_runs_path(tmp_path / "a") == nested / "all_runs"
    assert lake_runs_path(nested / "all_runs") == nested / "all_runs"
    (nested / "all_runs.zip").write_bytes(b"")
    assert lake_runs_path(tmp_path / "a") == nested / "all_runs.zip"  # the zip first
    assert lake_runs_path(tmp_path / "b") == tmp_path / "b" / "omniglot-py" / "all_runs.zip"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "all_runs.zip").write_bytes(b"")
    assert lake_runs_path(tmp_path / "c") == tmp_path / "c" / "all_runs.zip"  # dropped in the data root itself
    with pytest.raises(DatasetNotFoundError, match="omniglot-py/all_runs.zip"):
        load_lake_runs(tmp_path / "b")


@pytest.mark.parametrize("line, why", [
    ("run01/test/item02.png run01/training/class01.png extra", "3 fields"),
    ("run01/training/class01.png run01/test/item02.png", "must be a test item"),
    ("run01/test/item02.png run01/training/class09.png", "run01/training/class09.png is not in the runs"),
    ("run01/test/item01.png run01/training/class02.png", "labelled twice"),
    ("run02/test/item02.png run02/training/class01.png", "must be a test item"),  # another run's paths
])
def test_a_malformed_class_labels_line_is_one_error_naming_file_and_line(runs_folder, tmp_path, line, why):
    folder, _ = runs_folder
    labels = folder / "run01" / "class_labels.txt"
    rows = labels.read_text().splitlines()
    rows[1] = line
    labels.write_text("\n".join(rows) + "\n")
    for source in (folder, zip_folder(folder, tmp_path / "all_runs.zip")):
        with pytest.raises(CorruptDataError) as e:
            load_lake_runs(source)
        message = str(e.value)
        assert "\n" not in message and "class_labels.txt line 2:" in message and why in message
        assert "run01" in message


def test_missing_labels_for_a_test_item_and_a_corrupt_zip(runs_folder, tmp_path):
    folder, _ = runs_folder
    labels = folder / "run02" / "class_labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(CorruptDataError, match=r"run02/class_labels.txt: no line for test/item04.png"):
        load_lake_runs(folder)
    bad = tmp_path / "all_runs.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptDataError, match="not a readable zip archive"):
        load_lake_runs(bad)


def test_download_goes_through_the_omniglot_fetch_into_omniglot_py(runs_folder, tmp_path, monkeypatch):
    folder, _ = runs_folder
    payload = zip_folder(folder, tmp_path / "payload.zip").read_bytes()
    asked = []

    def fake_urlopen(url, timeout):
        asked.append(url)
        return io.BytesIO(payload)
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "fresh"
    path = download_lake_runs(root)
    assert asked == [URL] and path == root / "omniglot-py" / "all_runs.zip"
    assert load_lake_runs(root).names == ["run01", "run02", "run03"]
    download_lake_runs(root)
    assert len(asked) == 1  # there already: not fetched again

    def offline(url, timeout):
        raise OSError("network is unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError, match="one-shot-classification/all_runs.zip from brendenlake"):
        load_lake_runs(tmp_path / "offline", download=True)
    assert not (tmp_path / "offline").exists()  # nothing left behind


# ------------------------------------------------------------------------------------------- the score

def test_scored_as_lakes_script_over_every_test_item(runs_folder):
    folder, _ = runs_folder
    runs = load_lake_runs(folder)
    perfect = evaluate_lake_runs(nearest_pixels, runs)  # test items are copies of their training images
    assert perfect.mean == 100.0 and perfect.ci95_runs == (100.0, 100.0) and perfect.items == RUNS * WAY
    # run02's labels say two items belong to other classes: Lake's script counts those two as errors
    labels = folder / "run02" / "class_labels.txt"
    rows = labels.read_text().splitlines()
    rows[0], rows[1] = rows[0].replace("class03", "class04"), rows[1].replace("class01", "class02")
    labels.write_text("\n".join(rows) + "\n")
    acc = evaluate_lake_runs(nearest_pixels, load_lake_runs(folder))
    assert acc.per_run == {"run01": 100.0, "run02": 50.0, "run03": 100.0}
    assert acc.mean == pytest.approx(100 * 10 / 12)
    lo, hi = acc.ci95_runs
    assert 50.0 <= lo < acc.mean < hi <= 100.0
    assert acc.ci95_items == pytest.approx(wilson95(10, 12))
    first = evaluate_lake_runs(lambda ep: torch.zeros(ep.query.shape[0], ep.query.shape[1], ep.n_way), runs)
    assert first.mean == pytest.approx(100 * 3 / 12)  # a tie goes to the first training file, as argmax does


def test_wilson_interval_known_values():
    # 370 of 400 (92.5%), by hand: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.96
    lo, hi = wilson95(370, 400)
    assert lo == pytest.approx(89.50, abs=0.01) and hi == pytest.approx(94.70, abs=0.01)
    assert wilson95(12, 12)[1] == pytest.approx(100.0) and wilson95(0, 12)[0] == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------- the command

def cli():
    sys.path.insert(0, str(ROOT / "train"))
    import run
    return run


def test_eval_protocol_lake_runs_writes_per_run_accuracies(runs_folder, tmp_path, capsys):
    folder, _ = runs_folder
    torch.manual_seed(0)
    checkpoint = save_model(MatchingNetwork(), tmp_path / "ckpt")
    out = tmp_path / "lake.json"
    zipped = zip_folder(folder, tmp_path / "all_runs.zip")
    assert cli().main(["eval", "--checkpoint", str(checkpoint), "--protocol", "lake-runs", "--device", "cpu",
                       "--data-root", str(zipped), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["runs"] == RUNS and record["source"] == str(zipped)
    for name in ("as drawn", "demo preprocessing"):
        score = record["accuracy"][name]
        assert score["items"] == RUNS * WAY and set(score["per_run"]) == {"run01", "run02", "run03"}
        assert score["mean"] == pytest.approx(sum(score["per_run"].values()) / RUNS)
        assert score["ci95_runs_bootstrap"][0] <= score["mean"] <= score["ci95_runs_bootstrap"][1]
    err = capsys.readouterr().err
    assert "not Lake's 20 of 20" in err and "not trained on the lake split" in err


def test_eval_lake_runs_bad_input_is_one_line_and_writes_nothing(runs_folder, tmp_path, capsys):
    folder, _ = runs_folder
    checkpoint = save_model(MatchingNetwork(), tmp_path / "ckpt")
    (folder / "run03" / "class_labels.txt").write_text("test/item01.png\n")
    out = tmp_path / "lake.json"
    args = ["eval", "--checkpoint", str(checkpoint), "--protocol", "lake-runs", "--device", "cpu",
            "--data-root", str(tmp_path / "data"), "--out", str(out)]
    capsys.readouterr()
    assert cli().main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run03/class_labels.txt line 1: 1 fields, not 2" in err
    assert cli().main(args + ["--set", "fetch=true"]) == 2
    assert "eval --set takes only download" in capsys.readouterr().err
    assert cli().main(["eval", "--checkpoint", str(checkpoint), "--set", "download=true"]) == 2
    assert "goes with --protocol lake-runs" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------------- the docs' table

def test_the_docs_table_keeps_the_two_tests_apart():
    """docs/results/within_alphabet.md from its committed JSON: quoted numbers (on Lake's 20 runs) only in the
    Lake's-runs table, the resampled columns labelled as such, and a model's lake-runs record shown when given."""
    import table_within_alphabet as table

    cli()  # puts train/ on the path
    record = json.loads((ROOT / "docs" / "results" / "within_alphabet.json").read_text())
    text = table.markdown(record)
    resampled, lake = text.split("### Lake et al.'s 20 runs")
    assert "20-way 1-shot, resampled: random alphabet, characters and drawer pair" in resampled
    for name, q in record["quoted"].items():
        assert name not in resampled and f"*{q['20w1s']}*" in lake
    assert "| omniglot-lake | not measured here |" in lake and "omniglot-vinyals |" not in lake
    assert "92.5%" in lake and "independent check" in lake
    record["lake_runs"] = {"omniglot-lake": {"mean": 91.25, "ci95_runs_bootstrap": [88.0, 94.0],
                                             "command": "python train/run.py eval --protocol lake-runs"}}
    assert "| omniglot-lake | 91.25 (88.00-94.00) |" in table.markdown(record)
    assert text == (ROOT / "docs" / "results" / "within_alphabet.md").read_text()  # the committed file is this
