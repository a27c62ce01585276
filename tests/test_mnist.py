"""MNIST for the transfer test: the idx reader, the 10-class split, the folder layouts, the polarity."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from matchnet.data import DatasetNotFoundError, load_mnist
from matchnet.data.mnist import find_mnist, mnist_split, read_idx


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """LeCun's idx format written from its definition: 0, 0, type code, ndim, big-endian int32 dims, data."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    return header + array.astype(dtype).tobytes()


def test_read_idx_reads_plain_and_gzip_files_of_any_type(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    (tmp_path / "images-idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    for name in ("images-idx3-ubyte", "images-idx3-ubyte.gz"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (3, 4, 5) and np.array_equal(out, images)
    shorts = np.array([[-2, 300], [7, -32000]], dtype=np.int16)
    (tmp_path / "s").write_bytes(idx_bytes(shorts, 0x0B))
    assert np.array_equal(read_idx(tmp_path / "s"), shorts)  # big-endian on disk, native in memory
    floats = np.array([1.5, -2.25], dtype=np.float32)
    (tmp_path / "f").write_bytes(idx_bytes(floats, 0x0D))
    assert np.array_equal(read_idx(tmp_path / "f"), floats)


def test_read_idx_rejects_what_is_not_an_idx_file(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad")
    labels = np.arange(10, dtype=np.uint8)
    (tmp_path / "short").write_bytes(idx_bytes(labels)[:-3])  # truncated
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")


def fake_mnist(folder, counts=(5, 4, 6, 4, 4, 7, 4, 5, 4, 9), gz=True):
    """A tiny t10k pair: image i of digit d is filled with the value 10 * d + (its rank within d)."""
    labels = np.concatenate([np.full(c, d) for d, c in enumerate(counts)]).astype(np.uint8)
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    rank = {d: 0 for d in range(10)}
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    for i, d in enumerate(labels):
        images[i] = 10 * d + rank[d]
        rank[d] += 1
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        data = idx_bytes(array)
        (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    return images, labels


def test_load_mnist_groups_digits_in_file_order_with_equal_counts(tmp_path):
    fake_mnist(tmp_path / "mnist" / "MNIST" / "raw")
    split = load_mnist(tmp_path)
    assert split.images.shape == (10, 4, 28, 28) and split.images.dtype == torch.uint8  # rarest digit: 4
    assert split.num_classes == 10 and split.rotation.eq(0).all() and split.names[3] == "digit3"
    # class d holds digit d's first images in file order, pixel values as stored (ink stays high)
    expected = torch.tensor([[10 * d + r for r in range(4)] for d in range(10)], dtype=torch.uint8)
    assert torch.equal(split.images[:, :, 0, 0], expected)
    assert load_mnist(tmp_path, per_class=2).images.shape == (10, 2, 28, 28)
    with pytest.raises(ValueError, match="rarest digit has 4"):
        load_mnist(tmp_path, per_class=5)


@pytest.mark.parametrize("layout", ["mnist/MNIST/raw", "mnist/raw", "mnist", "MNIST/raw", "."])
def test_every_documented_layout_is_found(tmp_path, layout):
    fake_mnist(tmp_path / layout, gz=layout != "mnist")
    assert find_mnist(tmp_path) == tmp_path / layout
    assert load_mnist(tmp_path).num_classes == 10


def test_a_missing_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)


def test_mnist_split_checks_its_inputs():
    with pytest.raises(ValueError, match="expected images"):
        mnist_split(np.zeros((5, 28), np.uint8), np.zeros(5, np.int64))
