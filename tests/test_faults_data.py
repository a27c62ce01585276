"""Faults in the data path: the dataset cache (read-only or full folder, file mode, stale entries), damaged
Omniglot files, and downloads without network. Each fault gets one line naming the file and the fix, and
nothing is lost or half-written."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from matchnet.data import DatasetNotFoundError, load_omniglot
from matchnet.data import cache as dcache
from matchnet.data import omniglot

ENOSPC = ('Error while serializing: I/O error: No space left on device (os error 28) at path "{}"')


@pytest.fixture
def user_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "user-cache"
    monkeypatch.setenv("MATCHNET_CACHE", str(folder))
    return folder


@pytest.fixture
def root(omniglot_tree, tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(omniglot_tree, copy)
    return copy


def only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# -- the cache helper ------------------------------------------------------------------------------------------

def test_cache_round_trip_is_readable_by_others(tmp_path, user_cache):
    tensors = {"x": torch.arange(6, dtype=torch.uint8).view(2, 3)}
    old = os.umask(0o022)
    try:
        path = dcache.save_cached(tmp_path, "c.safetensors", "k1", tensors, {"names": ["a", "b"]})
    finally:
        os.umask(old)
    assert path == tmp_path / "c.safetensors"
    # safetensors alone writes 0600: other users of a shared data folder could not read the cache
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    got, meta = dcache.load_cached(tmp_path, "c.safetensors", "k1")
    assert torch.equal(got["x"], tensors["x"]) and meta == {"names": ["a", "b"]}
    assert dcache.load_cached(tmp_path, "c.safetensors", "k2") is None  # another key: stale
    assert only(tmp_path) == ["c.safetensors"] and not user_cache.exists()


def test_listing_key_changes_when_a_file_is_replaced(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"1234"), b.write_bytes(b"5678")
    key = dcache.listing_key([a, b], base=tmp_path)
    assert dcache.listing_key([b, a], base=tmp_path) == key  # order does not matter
    st = a.stat()
    a.write_bytes(b"abcd")  # same size, same mtime: indistinguishable by design (no hashing of 30k files)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert dcache.listing_key([a, b], base=tmp_path) == key
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert dcache.listing_key([a, b], base=tmp_path) != key
    a.write_bytes(b"abc")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert dcache.listing_key([a, b], base=tmp_path) != key
    assert dcache.listing_key([a], base=tmp_path) != key


def test_full_data_folder_falls_back_to_the_user_cache(tmp_path, user_cache, monkeypatch):
    """safetensors reports ENOSPC as SafetensorError, not OSError: the old fallback never ran."""
    real = dcache.save_file
    data = tmp_path / "data"
    data.mkdir()

    def full_disk(tensors, filename, metadata=None):
        if Path(filename).parent == data:
            raise SafetensorError(ENOSPC.format(filename))
        return real(tensors, filename, metadata=metadata)
    monkeypatch.setattr(dcache, "save_file", full_disk)
    path = dcache.save_cached(data, "c.safetensors", "k", {"x": torch.ones(3)})
    assert path is not None and path.parent == user_cache
    assert only(data) == []  # no temporary file left behind
    assert dcache.load_cached(data, "c.safetensors", "k") is not None


def test_read_only_data_folder_falls_back_to_the_user_cache(tmp_path, user_cache, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    # root ignores chmod, so the refusal a read-only mount gives is injected where the file is created
    real = dcache.save_file

    def read_only(tensors, filename, metadata=None):
        if Path(filename).parent == data:
            raise SafetensorError(f"Error while serializing: I/O error: Read-only file system (os error 30) "
                                  f'at path "{filename}"')
        return real(tensors, filename, metadata=metadata)
    monkeypatch.setattr(dcache, "save_file", read_only)
    assert dcache.save_cached(data, "c.safetensors", "k", {"x": torch.ones(3)}).parent == user_cache


def test_no_writable_place_still_returns_the_data(root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MATCHNET_CACHE", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("not a folder")

    def full_disk(tensors, filename, metadata=None):
        raise SafetensorError(ENOSPC.format(filename))
    monkeypatch.setattr(dcache, "save_file", full_disk)
    data = load_omniglot(root, strict=False)
    assert data.images.shape[0] == 12
    err = capsys.readouterr().err
    assert "dataset cache not written" in err and "MATCHNET_CACHE" in err
    assert not any(p.name.endswith(".tmp") for p in (root / "omniglot-py").iterdir())


def test_an_unreadable_or_corrupt_cache_is_rebuilt(root, user_cache):
    first = load_omniglot(root, strict=False)
    cache = root / "omniglot-py" / "matchnet_cache_28.safetensors"
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated
    again = load_omniglot(root, strict=False)
    assert torch.equal(first.images, again.images)
    assert cache.stat().st_size > 1000  # rewritten whole


def test_a_png_replaced_after_caching_is_noticed(root, user_cache):
    first = load_omniglot(root, strict=False)
    pngs = sorted((root / "omniglot-py" / "images_background").rglob("*.png"))
    other = sorted((root / "omniglot-py" / "images_evaluation").rglob("*.png"))[0]
    shutil.copy(other, pngs[0])  # a different drawing under the same name
    again = load_omniglot(root, strict=False)
    assert not torch.equal(first.images[0, 0], again.images[0, 0])
    assert torch.equal(again.images[0, 0], again.images[6, 0])  # what is on disk now
    # a PNG corrupted after caching is reported, not served from the stale cache
    pngs[1].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetNotFoundError, match=rf"{pngs[1].name}: corrupt PNG"):
        load_omniglot(root, strict=False)


# -- damaged Omniglot files ------------------------------------------------------------------------------------

def zipped(root: Path, dest: Path) -> Path:
    """The fixture tree as the two zips brendenlake/omniglot ships."""
    folder = dest / "omniglot-py"
    folder.mkdir(parents=True)
    for part in omniglot.PARTS:
        with zipfile.ZipFile(folder / f"{part}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for png in sorted((root / "omniglot-py" / part).rglob("*.png")):
                zf.write(png, png.relative_to(root / "omniglot-py"))
    return folder


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and "BytesIO" not in text and "Traceback" not in text
    return text


def test_truncated_zip_names_the_zip_and_the_fix(omniglot_tree, tmp_path, user_cache):
    folder = zipped(omniglot_tree, tmp_path / "z")
    target = folder / "images_evaluation.zip"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])  # an interrupted download
    with pytest.raises(DatasetNotFoundError) as info:
        load_omniglot(tmp_path / "z", strict=False)
    text = one_line(info)
    assert str(target) in text and "truncated" in text and "download=true" in text
    assert only(folder) == ["images_background.zip", "images_evaluation.zip"]  # nothing cached, nothing deleted


def test_damaged_zip_member_names_the_member(omniglot_tree, tmp_path, user_cache):
    folder = zipped(omniglot_tree, tmp_path / "z")
    target = folder / "images_background.zip"
    with zipfile.ZipFile(target) as zf:
        info = zf.infolist()[3]
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw = bytearray(target.read_bytes())
    for i in range(start + 10, start + 40):  # flip bytes inside one compressed PNG: a CRC or inflate error
        raw[i] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(DatasetNotFoundError) as err:
        load_omniglot(tmp_path / "z", strict=False)
    assert f"{target}:{info.filename}" in one_line(err)


def test_corrupt_png_names_the_file(root, user_cache):
    png = sorted((root / "omniglot-py" / "images_evaluation").rglob("*.png"))[7]
    png.write_bytes(png.read_bytes()[:40])  # truncated PNG
    with pytest.raises(DatasetNotFoundError) as info:
        load_omniglot(root, strict=False)
    assert f"{png}: corrupt PNG" in one_line(info)
    png.write_bytes(b"this is not an image")
    with pytest.raises(DatasetNotFoundError) as info:
        load_omniglot(root, strict=False)
    assert f"{png}: corrupt PNG (not an image" in one_line(info)
    assert not (root / "omniglot-py" / "matchnet_cache_28.safetensors").exists()


def test_a_fifo_in_place_of_a_png_is_refused_by_name(root, user_cache):
    """A FIFO would block read() forever; it is refused at open, naming it (an alarm turns a hang into a fail)."""
    png = sorted((root / "omniglot-py" / "images_background").rglob("*.png"))[3]
    png.unlink()
    os.mkfifo(png)

    def stuck(*_):
        raise AssertionError("blocked on a FIFO")
    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(30)
    try:
        with pytest.raises(DatasetNotFoundError) as info:
            load_omniglot(root, strict=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert f"{png}: not a regular file" in one_line(info)


def test_missing_drawing_names_the_character_and_drawer(root, user_cache):
    char = root / "omniglot-py" / "images_background" / "background_Alphabet1" / "character02"
    victim = sorted(char.glob("*.png"))[6]  # drawer 07
    victim.unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_omniglot(root, strict=False)
    text = one_line(info)
    assert "background_Alphabet1/character02 has 19 (missing drawing(s) 07)" in text
    assert str(root / "omniglot-py" / "images_background") in text


# -- downloading without network -------------------------------------------------------------------------------

def offline(monkeypatch, error: BaseException) -> list:
    calls = []

    def urlopen(url, timeout=None, **kwargs):
        calls.append((url, timeout))
        raise error
    monkeypatch.setattr(omniglot.urllib.request, "urlopen", urlopen)
    return calls


@pytest.mark.parametrize("error", [urllib.error.URLError(OSError(101, "Network is unreachable")),
                                   TimeoutError("The read operation timed out"),
                                   urllib.error.URLError("[Errno -3] Temporary failure in name resolution")])
def test_offline_download_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, user_cache, error):
    calls = offline(monkeypatch, error)
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError) as info:
        load_omniglot(root, download=True)
    text = one_line(info)
    assert "could not download https://" in text and "by hand" in text
    assert calls and all(timeout is not None and timeout > 0 for _, timeout in calls)  # never an endless wait
    assert not root.exists()  # no empty data/omniglot-py/ that looks like data


def test_interrupted_download_leaves_no_partial_zip(tmp_path, monkeypatch, user_cache):
    root = tmp_path / "data"
    (root / "omniglot-py").mkdir(parents=True)  # the user's folder: kept

    class Dropped:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def __init__(self):
            self.sent = 0

        def read(self, n=-1):
            self.sent += 1
            if self.sent > 2:
                raise ConnectionResetError(104, "Connection reset by peer")
            return b"PK\x03\x04" + b"x" * 1000
    monkeypatch.setattr(omniglot.urllib.request, "urlopen", lambda url, timeout=None: Dropped())
    with pytest.raises(DatasetNotFoundError, match="could not download .*Connection reset"):
        load_omniglot(root, download=True)
    assert only(root / "omniglot-py") == []


def test_download_that_is_not_a_zip_is_refused(tmp_path, monkeypatch, user_cache):
    import io

    class Page(io.BytesIO):
        pass
    monkeypatch.setattr(omniglot.urllib.request, "urlopen",
                        lambda url, timeout=None: Page(b"<html>captive portal</html>"))
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError, match="not a zip archive"):
        load_omniglot(root, download=True)
    assert not root.exists()


def test_no_data_message_names_the_real_option(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_omniglot(tmp_path / "nowhere")
    assert "--set download=true" in one_line(info) and "(--download)" not in str(info.value)
