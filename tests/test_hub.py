"""Hugging Face Hub support, offline: mixin round trips, the model card, publish --dry-run, broken checkpoints,
Hub ids without network, and rebuild's bookkeeping (with training stubbed out)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import RepositoryNotFoundError

import matchnet
from matchnet import CheckpointError, HubMatchingNetwork, MatchingNetwork, hub
from matchnet.checkpoint import save_model

ROOT = Path(__file__).resolve().parent.parent
VINYALS = ROOT / "assets" / "omniglot-vinyals"
CTOR_ARGS = {"in_channels", "image_size", "hidden", "layers", "fce", "fce_steps", "scale", "learn_scale"}


def run_cli():
    spec = importlib.util.spec_from_file_location("matchnet_run_cli", ROOT / "train" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def episode(seed: int = 0, side: int = 28):
    g = torch.Generator().manual_seed(seed)
    support = torch.rand(2, 10, 1, side, side, generator=g)
    labels = torch.arange(5).repeat(2).expand(2, 10)
    query = torch.rand(2, 6, 1, side, side, generator=g)
    return support, labels, query


def outputs(model: MatchingNetwork):
    with torch.no_grad():  # at the model's own side (omniglot-lake-within takes 56 px)
        return model(*episode(side=model.config["image_size"]), n_way=5)


def trained_like(fce: bool) -> HubMatchingNetwork:
    """A small model whose weights and BatchNorm statistics differ from a fresh one's."""
    torch.manual_seed(3)
    kwargs = dict(fce=True, fce_steps=3, scale=12.5, learn_scale=True, hidden=16) if fce else dict(hidden=16)
    model = HubMatchingNetwork(**kwargs)
    model.train()
    with torch.no_grad():
        model(*episode(1), n_way=5)  # moves the running statistics
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def forbid_network(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the network was used")
    monkeypatch.setattr(hub, "get_hf_file_metadata", fail)


@pytest.fixture
def connections(monkeypatch) -> list:
    """Every attempt to open a network connection, refused and recorded: a test asserts the list stays empty
    (an exception alone could be swallowed by a fallback)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")
    for name in ("getaddrinfo", "create_connection"):  # a name lookup comes first, a connection next
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return home


def fake_cache(home: Path, repo_id: str, model: MatchingNetwork) -> None:
    """The layout hf_hub_download leaves behind: refs/main names a snapshot folder holding the files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    save_model(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


# -- round trips -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fce", [False, True])
def test_save_pretrained_round_trip_is_bit_identical(tmp_path, fce):
    model = trained_like(fce)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["matchnet_format"] == 1 and set(config) == CTOR_ARGS | {"matchnet_format"}
    assert {k: config[k] for k in CTOR_ARGS} == model.config
    assert (tmp_path / "m" / "README.md").is_file()
    expected = outputs(model)
    for loaded in (HubMatchingNetwork.from_pretrained(tmp_path / "m"), matchnet.load(tmp_path / "m"),
                   matchnet.load(str(tmp_path / "m"), device="cpu"), matchnet.load_model(tmp_path / "m")):
        assert not loaded.training and loaded.config == model.config and isinstance(loaded, MatchingNetwork)
        for a, b in zip(expected, outputs(loaded)):
            assert torch.equal(a, b)


def test_shipped_assets_load_by_name_and_path():
    assert {"omniglot-vinyals", "omniglot-vinyals-fce", "omniglot-lake"} <= set(hub.shipped_models())
    for name in hub.shipped_models():
        by_name = matchnet.load(name)
        by_path = matchnet.load_model(ROOT / "assets" / name)
        for a, b in zip(outputs(by_name), outputs(by_path)):
            assert torch.equal(a, b)


def test_plain_model_has_no_hub_methods_and_the_hub_class_adds_them():
    """MatchingNetwork is a plain nn.Module; matchnet.load and HubMatchingNetwork bring the mixin's methods."""
    assert not hasattr(MatchingNetwork(hidden=8), "save_pretrained")
    assert type(matchnet.load_model(VINYALS)) is MatchingNetwork
    loaded = matchnet.load(VINYALS)
    assert type(loaded) is HubMatchingNetwork and callable(loaded.push_to_hub)


def test_from_pretrained_refuses_arguments_that_contradict_the_config():
    with pytest.raises(CheckpointError, match=r"config\.json.*fce"):
        HubMatchingNetwork.from_pretrained(VINYALS, fce=True)


# -- the model card --------------------------------------------------------------------------------------------

def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_has_metadata_results_training_and_citation(tmp_path):
    hub.stage(VINYALS, tmp_path / "out", "alice/matchnet-omniglot-vinyals")
    text = (tmp_path / "out" / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "matchnet" and meta["license"] == "mit" and meta["datasets"] == ["omniglot"]
    assert {"few-shot-learning", "matching-networks", "pytorch_model_hub_mixin"} <= set(meta["tags"])
    results = json.loads((VINYALS / "results.json").read_text())
    entries = meta["model-index"][0]["results"]
    assert len(entries) == 4
    for entry, key in zip(entries, ("5w1s", "5w5s", "20w1s", "20w5s")):
        metrics = {m["type"]: m["value"] for m in entry["metrics"]}
        assert metrics["accuracy"] == round(results["accuracy"][key]["mean"], 2)
        assert metrics["accuracy_ci95"] == round(results["accuracy"][key]["ci95"], 2)
    assert len(ModelCard(text).data.eval_results) == 8  # huggingface_hub parses it back too
    cells = " | ".join(f"{results['accuracy'][k]['mean']:.2f} ± {results['accuracy'][k]['ci95']:.2f}"
                       for k in ("5w1s", "5w5s", "20w1s", "20w5s"))
    assert f"| omniglot-vinyals | vinyals | no | {cells} |" in text  # the table row, from results.json
    training = json.loads((VINYALS / "training.json").read_text())
    assert training["command"] in text and results["command"] in text
    assert f"\"meta_batch\": {training['train_config']['meta_batch']}" in text  # the full training config
    assert "@inproceedings{vinyals2016matching" in text and "Matching Networks for One Shot Learning" in text
    assert 'matchnet.load("alice/matchnet-omniglot-vinyals")' in text


def test_card_without_results_says_so(tmp_path):
    trained_like(False).save_pretrained(tmp_path)
    text = (tmp_path / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "matchnet" and "model-index" not in meta
    assert "No evaluation results" in text


# -- publish ---------------------------------------------------------------------------------------------------

def test_publish_dry_run_writes_exactly_the_upload(tmp_path, capsys):
    main = run_cli()
    out = tmp_path / "dry"
    args = ["publish", "--checkpoint", str(VINYALS), "--repo-id", "alice/matchnet-omniglot-vinyals",
            "--dry-run", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(hub.PUBLISHED)
    printed = capsys.readouterr().out
    assert all(name in printed for name in hub.PUBLISHED)
    for name in ("config.json", "model.safetensors", "results.json", "training.json", "training_log.jsonl"):
        assert (out / name).read_bytes() == (VINYALS / name).read_bytes()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(args) == 2  # a second dry run into the same folder: refused, nothing replaced
    assert "not empty" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(args[:-1] + [str(empty)]) == 0 and sorted(p.name for p in empty.iterdir()) == sorted(hub.PUBLISHED)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".staging")]


def test_publish_fails_fast_without_token_or_network(tmp_path, monkeypatch, capsys, connections):
    main = run_cli()
    args = ["publish", "--checkpoint", str(VINYALS), "--repo-id", "alice/x"]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "get_token", lambda: None)

    def no_upload(*args, **kwargs):
        raise AssertionError("an upload was started")
    monkeypatch.setattr(hub, "HfApi", no_upload)
    assert main(args) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert connections == []  # without a token, nothing is asked of the network

    class DeadSession:
        def get(self, *args, **kwargs):
            raise ConnectionError("network unreachable")
    monkeypatch.setattr(hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(hub, "get_session", lambda: DeadSession())
    assert main(args) == 2
    assert "cannot reach" in capsys.readouterr().err
    tried = len(connections)  # huggingface_hub's own header code may try the (refused) network here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(args) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert len(connections) == tried  # offline: refused before anything is asked of the network


# -- broken checkpoints ----------------------------------------------------------------------------------------

def _edit_config(**change):
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(change)
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return edit


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])


BROKEN = {  # case: (how to break a copy of assets/omniglot-vinyals, the error expected)
    "missing weights": (lambda f: (f / "model.safetensors").unlink(), r"model\.safetensors: missing"),
    "truncated weights": (_truncate, r"model\.safetensors: unreadable or truncated"),
    "pickle only": (lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"),
                    r"model\.safetensors: missing"),
    "missing config": (lambda f: (f / "config.json").unlink(), r"config\.json: missing"),
    "config not JSON": (lambda f: (f / "config.json").write_text("{"), r"config\.json: not valid JSON"),
    "unknown key": (_edit_config(dropout=0.1), r"config\.json: unknown keys \['dropout'\]"),
    "newer format": (_edit_config(matchnet_format=2), r"config\.json: checkpoint format 2"),
    "weights do not fit": (_edit_config(fce=True), r"model\.safetensors: does not fit"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_folder_raises_checkpoint_error_naming_the_file(tmp_path, case):
    folder = tmp_path / "ckpt"
    shutil.copytree(VINYALS, folder)
    breaks, message = BROKEN[case]
    breaks(folder)
    for loader in (matchnet.load, HubMatchingNetwork.from_pretrained):
        with pytest.raises(CheckpointError, match=message) as info:
            loader(folder)
        assert str(folder) in str(info.value)
    with pytest.raises(CheckpointError, match=message):
        hub.stage(folder, tmp_path / "out")


def test_unknown_name_lists_shipped_models_without_network(monkeypatch):
    forbid_network(monkeypatch)
    with pytest.raises(CheckpointError, match=r"omniglot-vinyal: .*omniglot-vinyals"):
        matchnet.load("omniglot-vinyal")
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        matchnet.load("./no/such/folder")


# -- Hub ids without the network -------------------------------------------------------------------------------

def test_offline_uncached_repo_fails_without_touching_the_network(hf_home, monkeypatch, connections):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    forbid_network(monkeypatch)
    with pytest.raises(CheckpointError, match=r"alice/nothing-here: config\.json is not in the local Hugging Face "
                                              r"cache .*HF_HUB_OFFLINE is set"):
        matchnet.load("alice/nothing-here")
    assert connections == []  # no probe, no retry: nothing to wait for


def test_offline_loads_from_the_cache(hf_home, monkeypatch, connections):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    forbid_network(monkeypatch)
    model = trained_like(True)
    fake_cache(hf_home, "alice/tiny", model)
    for a, b in zip(outputs(model), outputs(matchnet.load("alice/tiny"))):
        assert torch.equal(a, b)
    assert connections == []  # a cache hit


def test_unreachable_hub_falls_back_to_the_cache(hf_home, monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")
    monkeypatch.setattr(hub, "get_hf_file_metadata", unreachable)
    with pytest.raises(CheckpointError, match=r"alice/tiny: .*not in the local Hugging Face cache.*not be reached"):
        matchnet.load("alice/tiny")
    model = trained_like(False)
    fake_cache(hf_home, "alice/tiny", model)
    assert torch.equal(outputs(model)[0], outputs(matchnet.load("alice/tiny"))[0])


def test_missing_repo_is_named(hf_home, monkeypatch):
    def not_found(*args, **kwargs):
        error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # its constructor wants a live response
        error.args = ("404",)
        raise error
    monkeypatch.setattr(hub, "get_hf_file_metadata", not_found)
    with pytest.raises(CheckpointError, match=r"alice/does-not-exist: no such model repository"):
        matchnet.load("alice/does-not-exist")


# -- rebuild's bookkeeping -------------------------------------------------------------------------------------

def test_rebuild_ships_resumes_and_skips(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT))
    from train import rebuild

    root = tmp_path / "repo"
    (root / "train" / "configs").mkdir(parents=True)
    for name in ("omniglot_vinyals.toml", "omniglot_vinyals_fce.toml", "smoke.toml", "baseline_siamese.toml",
                 "ptb_lstm.toml"):
        shutil.copy(ROOT / "train" / "configs" / name, root / "train" / "configs" / name)
    monkeypatch.chdir(root)  # runs/<name> is relative, as in train/run.py
    trained = []

    def fake_train(cfg, splits=None, resume=True):
        run = Path(cfg.run_dir)
        save_model(trained_like(cfg.fce), run / "best")
        (run / "log.jsonl").write_text('{"step": 1}\n')
        (run / "train_config.json").write_text(json.dumps({"name": cfg.name}))
        trained.append(cfg.name)
        return {"seconds": 1.0}

    def fake_eval(folder, dataset, split, data_root, device, episodes, seed, out, data_options=None):
        acc = {"mean": 90.0, "ci95": 0.5}
        return {"checkpoint": str(folder), "dataset": dataset, "split": split, "test_classes": 1, "episodes": episodes,
                "seed": seed, "query_per_class": 15, "hardware": "test", "model": matchnet.load_model(folder).config,
                "accuracy": {k: acc for k in ("5w1s", "5w5s", "20w1s", "20w5s")}}

    def fake_compare(name, cfg, new, old, splits, dev, episodes, new_test=None, old_splits=None):
        acc = {"mean": 90.0, "ci95": 0.5}
        return {"model": name, "episodes": episodes, "selection_metric": "val_20w1s", "shipped": "new",
                "reason": "nothing was shipped before", "old": None,
                "new": {"checkpoint": str(new), "val": {"val_20w1s": acc}, "test": {"5w1s": acc}}}

    monkeypatch.setattr(rebuild, "train", fake_train)
    monkeypatch.setattr(rebuild, "load_splits", lambda *a: {})
    monkeypatch.setattr(rebuild.compare, "compare", fake_compare)
    kwargs = dict(device="cpu", data_root=None, push_to=None, private=False, only=[], restart=False, episodes=3,
                  plan_only=False, evaluate=fake_eval, hardware=lambda d: "test CPU")
    rebuild.run(root, **kwargs)
    # smoke.toml is not shipped; the baseline and PTB configs belong to `table omniglot` / `table ptb`
    assert sorted(trained) == ["omniglot-vinyals", "omniglot-vinyals-fce"]
    shipped = root / "assets" / "omniglot-vinyals-fce"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(set(hub.PUBLISHED) - {"README.md"} | {"comparison.json"})
    assert matchnet.load(shipped).fce
    results = json.loads((shipped / "results.json").read_text())
    assert results["checkpoint"] == "assets/omniglot-vinyals-fce" and "--episodes 3" in results["command"]
    training = json.loads((shipped / "training.json").read_text())
    assert "train/configs/omniglot_vinyals_fce.toml" in training["train_command"]
    assert training["command"] == "python train/run.py rebuild --device cpu --only omniglot-vinyals-fce"
    assert "omniglot-vinyals-fce" in (root / "docs" / "RESULTS.md").read_text()
    assert "estimated time" in capsys.readouterr().out

    trained.clear()
    rebuild.run(root, **kwargs)  # everything is up to date
    assert trained == [] and "up to date" in capsys.readouterr().out
    with open(root / "train" / "configs" / "omniglot_vinyals.toml", "a") as f:
        f.write("# edited\n")
    rebuild.run(root, **{**kwargs, "plan_only": True})
    assert "from scratch (config changed" in capsys.readouterr().out
    rebuild.run(root, **kwargs)
    assert trained == ["omniglot-vinyals"]


def test_rebuild_plans_the_real_configs():
    """Every config rebuild picks up in train/configs/ parses; the shipped models are exactly its jobs."""
    sys.path.insert(0, str(ROOT))
    from train import rebuild

    jobs = rebuild.make_jobs(ROOT, {}, {}, [], restart=True)
    assert sorted(j.name for j in jobs) == ["omniglot-lake", "omniglot-lake-within", "omniglot-vinyals",
                                             "omniglot-vinyals-fce"]
