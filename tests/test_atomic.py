"""matchnet.atomic: the one writer every module uses."""
import os

import pytest

from matchnet import atomic


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")

    def boom(path):
        open(path, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic.write_with(target, boom)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]


def test_clean_partials_removes_only_what_killed_writers_left(tmp_path):
    (tmp_path / "sub").mkdir()
    left = atomic.temp_path(tmp_path / "sub" / "last.safetensors")
    left.write_bytes(b"x" * 10)
    keep = [tmp_path / "last.safetensors", tmp_path / ".hidden", tmp_path / "notes.partial-1"]
    for p in keep:
        p.write_text("keep")
    assert atomic.is_partial(left) and not any(atomic.is_partial(p) for p in keep)
    assert atomic.clean_partials(tmp_path) == [left]
    assert all(p.exists() for p in keep) and not left.exists()


def test_mode_sets_the_finished_files_permissions(tmp_path):
    path = atomic.write_bytes(tmp_path / "cache.npy", b"1", mode=0o644)
    assert os.stat(path).st_mode & 0o777 == 0o644
