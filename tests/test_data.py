"""The Omniglot reader: folder layout, zips, the cache, splits, and errors that name the expected layout."""
import shutil
import zipfile

import pytest
import torch

from matchnet.data import DatasetNotFoundError, load_omniglot, omniglot_splits
from matchnet.data import omniglot
from matchnet.data.omniglot import read_split_file


def test_reads_fixture_tree_with_ink_as_255(omniglot_tree):
    data = load_omniglot(omniglot_tree, strict=False, cache=False)
    assert data.images.shape == (12, 20, 28, 28) and data.images.dtype == torch.uint8
    assert data.names[0] == "background_Alphabet0/character01"
    assert int(data.background.sum()) == 6
    # strokes are a minority of pixels: ink (255) is rare, paper (0) is common
    assert (data.images > 128).float().mean() < 0.35
    assert data.images[:, :, 0, 0].max() == 0  # the corner is paper


def test_zip_and_folder_give_identical_tensors(omniglot_tree, tmp_path):
    folder = load_omniglot(omniglot_tree, strict=False, cache=False)
    zipped = tmp_path / "omniglot-py"
    zipped.mkdir()
    for part in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(zipped / f"{part}.zip", "w") as zf:
            for png in sorted((omniglot_tree / "omniglot-py" / part).rglob("*.png")):
                zf.write(png, png.relative_to(omniglot_tree / "omniglot-py"))
    from_zip = load_omniglot(tmp_path, strict=False, cache=False)
    assert from_zip.names == folder.names
    assert torch.equal(from_zip.images, folder.images)


def test_cache_is_written_then_used(omniglot_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("MATCHNET_CACHE", str(tmp_path / "user-cache"))
    root = tmp_path / "copy"
    shutil.copytree(omniglot_tree, root)
    first = load_omniglot(root, strict=False)
    cache = root / "omniglot-py" / "matchnet_cache_28.safetensors"
    assert cache.is_file() and not (tmp_path / "user-cache").exists()

    def no_decoding(*args):
        raise AssertionError("decoded a PNG although the cache is current")
    monkeypatch.setattr(omniglot, "_to_array", no_decoding)
    again = load_omniglot(root, strict=False)
    assert torch.equal(first.images, again.images) and first.names == again.names


def test_missing_folder_names_the_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="images_background/<Alphabet>/characterNN"):
        load_omniglot(tmp_path / "nowhere")


def test_incomplete_folder_is_an_error(omniglot_tree, tmp_path):
    root = tmp_path / "partial"
    shutil.copytree(omniglot_tree, root)
    # strict (the default) wants all 964 + 659 characters
    with pytest.raises(DatasetNotFoundError, match="missing or incomplete"):
        load_omniglot(root, cache=False)
    # a character with a missing drawing is incomplete even when not strict
    next((root / "omniglot-py" / "images_evaluation").rglob("*.png")).unlink()
    with pytest.raises(DatasetNotFoundError, match="20 drawings"):
        load_omniglot(root, strict=False, cache=False)


def test_split_file_naming_an_unknown_character_is_an_error(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("Nope/character01/rot000\n")
    with pytest.raises(DatasetNotFoundError, match="Nope/character01"):
        read_split_file(f, {"Real/character01": 0})


def test_real_omniglot_and_its_splits(real_omniglot_root):
    if real_omniglot_root is None:
        pytest.skip("the real Omniglot zips (../shared/data/omniglot) are not on this machine")
    data = load_omniglot(real_omniglot_root)
    assert data.images.shape == (1623, 20, 28, 28)
    assert int(data.background.sum()) == 964
    vin = omniglot_splits(data, "vinyals")
    assert {k: v.num_classes for k, v in vin.items()} == {"train": 4112, "val": 688, "test": 1692,
                                                          "trainval": 4800}
    chars = {k: set(v.source.tolist()) for k, v in vin.items()}
    assert len(chars["train"]) + len(chars["val"]) + len(chars["test"]) == 1623
    assert not (chars["train"] & chars["test"]) and not (chars["val"] & chars["test"])
    assert not (chars["train"] & chars["val"])
    lake = omniglot_splits(data, "lake")
    assert lake["test"].num_classes == 659 and bool((lake["test"].rotation == 0).all())
    lake_chars = {k: set(v.source.tolist()) for k, v in lake.items()}
    assert not (lake_chars["train"] & lake_chars["val"]) and not (lake_chars["trainval"] & lake_chars["test"])
    assert all(data.background[i] for i in lake_chars["trainval"])
