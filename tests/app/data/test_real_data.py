"""The real data sets as fetched in ``data_dir()`` ($CEAG_DATA or ~/.cache/ceag).

``make test`` fetches them first and sets CEAG_REQUIRE_DATA=1, so there a missing data set
fails; a bare ``pytest`` skips the ones not fetched (``ceag data fetch all`` to run them).
"""

from __future__ import annotations

import os

import pytest
import torch

import ceag.app.data as data


def _load(name: str) -> data.GroupedDataset:
    if not data.is_fetched(name) and not os.environ.get("CEAG_REQUIRE_DATA"):
        pytest.skip(f"{name} is not fetched in {data.data_dir()}")
    return data.load(name)


def _check(ds: data.GroupedDataset) -> None:
    for split in (ds.train, ds.test):
        x, y, g = split.tensors
        assert torch.isfinite(x).all()
        assert 0 <= int(g.min()) and int(g.max()) < ds.num_groups


def test_adult():
    ds = _load("adult")
    _check(ds)
    s = ds.summary()
    assert (s["train"]["rows"], s["test"]["rows"]) == (32_561, 16_281)
    assert s["train"]["rows"] + s["test"]["rows"] == 48_842
    assert ds.num_groups == 40 and s["train"]["groups_present"] == 40
    assert s["train"]["positive_rate"] == pytest.approx(0.2408, abs=1e-3)
    assert s["test"]["positive_rate"] == pytest.approx(0.2362, abs=1e-3)
    assert s["train"]["largest_group"] == "White/Male/30-44"
    assert ds.input_shape == (104,)


def test_census_kdd():
    ds = _load("census-kdd")
    folder = data.data_dir() / "census-kdd"
    raw = [sum(1 for _ in open(folder / f"census_income_1994_1995_{s}.csv", "rb")) for s in ("train", "test")]
    assert raw == [199_523, 99_762]
    _check(ds)
    s = ds.summary()
    assert (s["train"]["rows"], s["test"]["rows"]) == (103_540, 51_873)  # worked >= 1 week
    assert s["train"]["positive_rate"] == pytest.approx(0.7093, abs=1e-3)
    assert s["test"]["positive_rate"] == pytest.approx(0.7051, abs=1e-3)
    assert ds.num_groups == 400 and s["train"]["groups_present"] == 265
    assert "199,523 + 99,762 raw rows" in ds.description


def test_fashion_mnist():
    ds = _load("fashion-mnist")
    _check(ds)
    s = ds.summary()
    assert (s["train"]["rows"], s["test"]["rows"]) == (60_000, 10_000)
    assert s["train"]["group_size_min"] == s["train"]["group_size_max"] == 6_000
    x = ds.train.tensors[0]
    assert x.shape == (60_000, 1, 28, 28)
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-3) and float(x.std()) == pytest.approx(1.0, abs=1e-3)
