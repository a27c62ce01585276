"""Hostile or damaged checkpoints and publish --dry-run mistakes: one line naming the file (or key, or tensor)
and the fix, and nothing lost, overwritten or half-written. No network: Hub calls are stubbed."""
from __future__ import annotations

import functools
import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import matchnet
from matchnet import CheckpointError, HubMatchingNetwork, MatchingNetwork, hub
from matchnet import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent
VINYALS = ROOT / "assets" / "omniglot-vinyals"


def run_cli():
    spec = importlib.util.spec_from_file_location("matchnet_run_cli_faults", ROOT / "train" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(text: str) -> str:
    text = text.strip()
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture
def folder(tmp_path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(VINYALS, copy)
    return copy


def edit_config(folder: Path, **change) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))


def forbid_network(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the network was used")
    monkeypatch.setattr(hub, "get_hf_file_metadata", fail)
    monkeypatch.setattr(hub, "hf_hub_download", fail)


# -- publish --dry-run OUTDIR ----------------------------------------------------------------------------------

def test_dry_run_into_the_checkpoint_folder_changes_nothing(folder, capsys):
    (folder / "README.md").write_text("my own notes\n")  # a card the user wrote: must survive
    before = snapshot(folder)
    args = ["publish", "--checkpoint", str(folder), "--repo-id", "alice/x", "--dry-run", str(folder)]
    assert run_cli()(args) == 2
    err = one_line(capsys.readouterr().err)
    assert str(folder) in err and "is the checkpoint folder" in err and "new or empty folder" in err
    assert snapshot(folder) == before  # results.json, training.json, training_log.jsonl, README.md all intact


def test_dry_run_inside_the_checkpoint_folder_is_refused(folder, capsys):
    before = snapshot(folder)
    out = folder / "upload"
    assert run_cli()(["publish", "--checkpoint", str(folder), "--repo-id", "alice/x", "--dry-run", str(out)]) == 2
    assert "inside the checkpoint folder" in one_line(capsys.readouterr().err)
    assert not out.exists() and snapshot(folder) == before


def test_dry_run_into_a_file_is_one_line(folder, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert run_cli()(["publish", "--checkpoint", str(folder), "--repo-id", "alice/x", "--dry-run", str(target)]) == 2
    assert f"{target}: a file, not a folder" in one_line(capsys.readouterr().err)
    assert target.read_text() == "keep me"


def test_dry_run_that_fails_midway_leaves_nothing(folder, tmp_path, monkeypatch):
    out = tmp_path / "upload"

    def disk_full(src, dst, *a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(hub.shutil, "copy2", disk_full)
    with pytest.raises(OSError, match="No space left"):
        hub.stage(folder, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no OUTDIR, no staging folder


def test_dry_run_into_an_empty_folder_works(folder, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    files = hub.stage(folder, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(hub.PUBLISHED) == sorted(f.name for f in files)


# -- hostile or wrong config.json ------------------------------------------------------------------------------

CONFIG_FAULTS = {  # case: (change to config.json, the one-line error expected)
    "string for int": ({"hidden": "64"}, r'config\.json: hidden must be an integer, got "64" \(a string\)'),
    "bool for int": ({"layers": True}, r"config\.json: layers must be an integer, got true"),
    "float for int": ({"image_size": 28.5}, r"config\.json: image_size must be an integer, got 28\.5"),
    "string for bool": ({"fce": "false"}, r'config\.json: fce must be true or false, got "false"'),
    "int for bool": ({"learn_scale": 0}, r"config\.json: learn_scale must be true or false, got 0"),
    "scale zero": ({"scale": 0}, r"config\.json: scale must be positive, got 0"),
    "scale negative": ({"scale": -3.0}, r"config\.json: scale must be positive, got -3\.0"),
    "scale string": ({"scale": "30"}, r'config\.json: scale must be a finite number, got "30"'),
    "hidden zero": ({"hidden": 0}, r"config\.json: hidden must be positive, got 0"),
    "pooled away": ({"layers": 6}, r"config\.json: image_size 28 cannot go through 6 2x2 poolings"),
    "huge hidden": ({"hidden": 200000},  # 1.44 TB if built: the header check refuses it first
                    r"model\.safetensors: does not fit the model in config\.json: tensor encoder\.net\.0\.0\.weight "
                    r"is \[64, 1, 3, 3\], config\.json implies \[200000, 1, 3, 3\]"),
    "large hidden": ({"hidden": 4000}, r"tensor encoder\.net\.0\.0\.weight is \[64, 1, 3, 3\], config\.json implies "
                                       r"\[4000, 1, 3, 3\]"),
    "fce on": ({"fce": True}, r"model\.safetensors: does not fit the model in config\.json \(tensors missing: "
                              r"\['query_lstm"),
}


@pytest.mark.parametrize("case", list(CONFIG_FAULTS))
def test_hostile_config_is_refused_before_the_model_is_built(folder, monkeypatch, case):
    change, message = CONFIG_FAULTS[case]
    edit_config(folder, **change)

    def no_loading(*a, **k):
        raise AssertionError("the weights were read although the config does not match them")
    monkeypatch.setattr(ckpt, "load_file", no_loading)
    for loader in (matchnet.load, HubMatchingNetwork.from_pretrained, ckpt.load_model):
        with pytest.raises(CheckpointError, match=message) as info:
            loader(folder)
        assert str(folder) in one_line(str(info.value))
    assert not any(p.name.startswith("math domain") for p in folder.iterdir())


def test_nan_or_inf_weights_name_the_tensor(folder):
    state = load_file(folder / "model.safetensors")
    state["encoder.net.2.0.weight"][0, 0, 1, 1] = math.nan
    state["encoder.net.3.1.running_var"][5] = math.inf
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor encoder\.net\.2\.0\.weight holds 1 NaN "
                                              r"or infinite value"):
        matchnet.load(folder)


def test_wrong_dtype_is_named(folder):
    state = load_file(folder / "model.safetensors")
    state["encoder.net.0.1.running_mean"] = state["encoder.net.0.1.running_mean"].to(torch.int32)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"tensor encoder\.net\.0\.1\.running_mean has dtype I32"):
        matchnet.load(folder)


def test_hostile_hub_config_fails_before_the_weights_are_downloaded(tmp_path, monkeypatch):
    """A Hub repo is untrusted: config.json is checked as soon as it arrives."""
    snap = tmp_path / "snap"
    shutil.copytree(VINYALS, snap)
    edit_config(snap, scale=0)
    fetched = []

    def download(repo_id, filename, **kwargs):
        fetched.append(filename)
        return str(snap / filename)
    monkeypatch.setattr(hub, "get_hf_file_metadata", lambda *a, **k: type("M", (), {"commit_hash": "c" * 40})())
    monkeypatch.setattr(hub, "hf_hub_download", download)
    with pytest.raises(CheckpointError, match=r"config\.json: scale must be positive, got 0"):
        matchnet.load("alice/hostile")
    assert fetched == ["config.json"]


# -- side files and names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("content,kind", [("[1, 2]", "a list"), ('"hello"', "a string"), ("null", "null")])
def test_training_json_that_is_not_an_object(folder, tmp_path, content, kind):
    (folder / "training.json").write_text(content)
    with pytest.raises(CheckpointError, match=rf"training\.json: expected a JSON object .*got {kind}"):
        hub.stage(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_eval_command_reports_a_training_json_that_is_not_an_object(folder, tmp_path, capsys):
    (folder / "training.json").write_text("[1, 2]")
    args = ["eval", "--checkpoint", str(folder), "--episodes", "10", "--data-root", str(tmp_path / "no-data")]
    assert run_cli()(args) == 2  # the eval command reads it too, before any data
    assert f"{folder / 'training.json'}: expected a JSON object" in one_line(capsys.readouterr().err)


def test_mistyped_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    forbid_network(monkeypatch)
    (tmp_path / "runs" / "good").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as info:
        matchnet.load("runs/nosuch")
    text = one_line(str(info.value))
    assert text.startswith("runs/nosuch: no such checkpoint folder") and "good" in text and "hf://runs/nosuch" in text


def test_hf_prefix_forces_a_hub_lookup(tmp_path, monkeypatch):
    (tmp_path / "alice").mkdir()
    monkeypatch.chdir(tmp_path)  # a local alice/ would make alice/tiny a local path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match=r"alice/tiny: config\.json is not in the local Hugging Face cache"):
        matchnet.load("hf://alice/tiny")
    with pytest.raises(CheckpointError, match=r"hf://nope: not a Hugging Face Hub repo id"):
        matchnet.load("hf://nope")


def test_constructor_refusal_names_the_config(folder, monkeypatch):
    """The constructor's own checks (e.g. mean/std per channel) run on the meta device and name config.json."""
    @functools.wraps(MatchingNetwork.__init__)  # the same signature, so config.json's keys are still known
    def refuse(self, *args, **kwargs):
        raise ValueError("mean and std need one value per input channel (1); got [0.5, 0.5], [1, 1]")
    monkeypatch.setattr(MatchingNetwork, "__init__", refuse)
    with pytest.raises(CheckpointError, match=r"config\.json: mean and std need one value per input channel"):
        ckpt.load_model(folder)


def test_list_values_must_be_finite_numbers():
    path = Path("x/config.json")
    for bad in (["a"], [float("nan")], [True]):
        with pytest.raises(CheckpointError, match=r"x/config\.json: mean must be a list of finite numbers"):
            ckpt.check_config({"mean": bad}, path)
    ckpt.check_config({"mean": [0.5, 1]}, path)  # fine
