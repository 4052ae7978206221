"""IDX parser (on small files written here), Fashion-MNIST loader, digits split, mixture."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from batchcraft.data.images import (
    find_fashion_mnist,
    hard_mixture,
    load_digits_split,
    load_fashion_mnist,
    read_idx,
)


def write_idx(path, array: np.ndarray, code: int, *, compress: bool = False) -> None:
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = head + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
     (np.float32, 0x0D), (np.float64, 0x0E)],
    ids=["u8", "i8", "i16", "i32", "f32", "f64"],
)  # fmt: skip
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_read_idx_round_trip(tmp_path, dtype, code, compress):
    arr = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == np.uint8:
        arr = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    p = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(p, arr, code, compress=compress)
    out = read_idx(p)
    assert out.shape == (2, 3, 5)
    assert np.array_equal(out.numpy(), arr)


def test_read_idx_errors(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x00\x08\x01")
    with pytest.raises(ValueError, match="two zero bytes"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="type code"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00")
    with pytest.raises(ValueError, match="header says"):
        read_idx(p)


def test_load_fashion_mnist_from_small_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("t10k", 4)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x08, compress=True)  # fmt: skip
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10, 0x08)
    s = load_fashion_mnist(tmp_path)
    assert s.x_train.shape == (6, 1, 28, 28) and s.x_test.shape == (4, 1, 28, 28)
    assert (
        s.x_train.dtype == torch.float32
        and 0 <= float(s.x_train.min()) <= float(s.x_train.max()) <= 1
    )
    assert s.y_train.tolist() == list(range(6)) and s.y_test.dtype == torch.long


def test_missing_fashion_mnist_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@pytest.mark.data
def test_real_fashion_mnist_if_installed():
    if find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    s = load_fashion_mnist()
    assert s.x_train.shape == (60000, 1, 28, 28) and s.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(s.y_train).tolist() == [6000] * 10


def test_digits_split_seeded():
    pytest.importorskip("sklearn")
    a, b = load_digits_split(seed=3), load_digits_split(seed=3)
    assert torch.equal(a.x_train, b.x_train) and a.x_train.shape[0] + a.x_test.shape[0] == 1797
    assert a.x_train.shape[1:] == (1, 8, 8) and a.num_classes == 10


def test_hard_mixture_label_noise():
    clean = hard_mixture(2000, 10, seed=1)
    noisy = hard_mixture(2000, 10, seed=1, label_noise=0.2)
    assert torch.equal(clean.x_train, noisy.x_train)
    flipped = float((clean.y_train != noisy.y_train).float().mean())
    assert 0.15 < flipped < 0.25
    with pytest.raises(ValueError, match="label_noise"):
        hard_mixture(label_noise=1.0)


def test_fashion_mnist_search_takes_data_dir_and_names_what_it_tried(tmp_path, monkeypatch):
    import batchcraft.data.images as images

    monkeypatch.delenv("BATCHCRAFT_FASHION_MNIST", raising=False)
    monkeypatch.setattr(images, "_FASHION_DIRS", (str(tmp_path / "no-debian-package"),))
    data = tmp_path / "data"
    folder = data / "fashion-mnist"
    folder.mkdir(parents=True)
    for split, n in (("train", 6), ("t10k", 4)):
        write_idx(folder / f"{split}-images-idx3-ubyte",
                  np.zeros((n, 28, 28), dtype=np.uint8), 0x08)  # fmt: skip
        write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8), 0x08)
    assert find_fashion_mnist(data) == folder
    assert load_fashion_mnist(data_dir=data).x_train.shape == (6, 1, 28, 28)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_fashion_mnist(empty) is None
    with pytest.raises(FileNotFoundError, match="empty/fashion-mnist") as err:
        load_fashion_mnist(data_dir=empty)
    assert "no-debian-package" in str(err.value) and "dataset-fashion-mnist" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_fashion_mnist(tmp_path / "typo")
