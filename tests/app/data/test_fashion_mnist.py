"""ceag.app.data fashion-mnist: system copy or apt-get download, IDX decoding, class = group."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

import ceag.app.data as data
from ceag.app.data import fashion_mnist


def test_fetch_from_apt_download_and_decode(fake):
    folder = data.fetch("fashion-mnist", fake.root, progress=False)
    assert fake.apt_calls == ["dataset-fashion-mnist"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*fashion_mnist.FILES, "manifest.json"])
    ds = data.load("fashion-mnist", fake.root)
    arrays = fake.fmnist_arrays()
    x, y, g = ds.train.tensors
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32
    expected = (arrays["train-images-idx3-ubyte.gz"].astype(np.float64) / 255 - 0.2860) / 0.3530
    np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=0, atol=1e-5)
    assert y.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    assert torch.equal(g, y)  # class = group
    x_te, y_te, g_te = ds.test.tensors
    assert x_te.shape == (10, 1, 28, 28) and y_te.tolist() == list(range(9, -1, -1)) and torch.equal(g_te, y_te)
    assert ds.num_groups == ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.group_names == ds.class_names and ds.class_names[9] == "Ankle boot"


def test_fetch_copies_the_installed_package(fake):
    fake.write_fmnist(fashion_mnist.SYSTEM_DIR, fake.fmnist_arrays())
    data.fetch("fashion-mnist", fake.root, progress=False)
    assert fake.apt_calls == []
    assert data.load("fashion-mnist", fake.root).train.tensors[0].shape[0] == 20


def test_system_files_with_other_checksums_fall_back_to_apt(fake):
    fake.write_fmnist(fashion_mnist.SYSTEM_DIR, fake.fmnist_arrays(seed=1))
    data.fetch("fashion-mnist", fake.root, progress=False)
    assert fake.apt_calls == ["dataset-fashion-mnist"]


def test_apt_failure_says_how_to_install(fake):
    fake.apt_error = data.DataFetchError("apt-get download dataset-fashion-mnist: exited with status 100")
    with pytest.raises(data.DataFetchError, match=r"apt-get update && apt-get install dataset-fashion-mnist"):
        data.fetch("fashion-mnist", fake.root, progress=False)
    assert fake.leftovers(fake.root) == []


def test_package_with_other_files_is_corrupt(fake):
    target = fake.apt_root / fashion_mnist.PACKAGE_DIR / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(fake.idx_bytes(np.zeros(10, dtype=np.uint8)))
    with pytest.raises(data.DataCorruptError, match="t10k-labels"):
        data.fetch("fashion-mnist", fake.root, progress=False)
    assert fake.leftovers(fake.root) == []


def test_package_without_the_files(fake):
    (fake.apt_root / fashion_mnist.PACKAGE_DIR / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(data.DataFetchError, match="lacks"):
        data.fetch("fashion-mnist", fake.root, progress=False)
    assert fake.leftovers(fake.root) == []


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"\x00" * 12, "unsigned bytes"),  # float IDX
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00" * 3, "3 data bytes"),  # truncated
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path, payload, match):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(payload))
    with pytest.raises(data.DataCorruptError, match=match):
        fashion_mnist.read_idx(path)


def test_read_idx_shapes(tmp_path, fake):
    path = tmp_path / "x.gz"
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path.write_bytes(fake.idx_bytes(array))
    np.testing.assert_array_equal(fashion_mnist.read_idx(path), array)
