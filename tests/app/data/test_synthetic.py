"""ceag.app.data synthetic: determinism, shapes, Zipf sizes, minority effect, validation, scale."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import ceag.app.data as data
from ceag.app.data.synthetic import group_sizes


def _tensors(ds):
    return ds.train.tensors + ds.test.tensors


def test_deterministic_in_seed():
    a, b = data.synthetic(seed=3), data.synthetic(seed=3)
    assert all(torch.equal(s, t) for s, t in zip(_tensors(a), _tensors(b)))
    c = data.synthetic(seed=4)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])


def test_test_split_does_not_depend_on_num_train():
    a, b = data.synthetic(num_train=1000), data.synthetic(num_train=3000)
    assert all(torch.equal(s, t) for s, t in zip(a.test.tensors, b.test.tensors))


@pytest.mark.parametrize("num_groups, num_features, num_classes", [(1, 2, 2), (20, 32, 2), (7, 9, 5), (300, 16, 10)])
def test_shapes_dtypes_and_ranges(num_groups, num_features, num_classes):
    ds = data.synthetic(num_groups=num_groups, num_train=2000, num_test=500, num_features=num_features, num_classes=num_classes)
    x, y, g = ds.train.tensors
    assert x.shape == (2000, num_features) and x.dtype == torch.float32
    assert y.shape == g.shape == (2000,) and y.dtype == g.dtype == torch.int64
    assert len(ds.test) == 500
    assert 0 <= int(g.min()) and int(g.max()) < num_groups
    assert 0 <= int(y.min()) and int(y.max()) < num_classes
    assert ds.num_groups == len(ds.group_names) == num_groups and ds.num_classes == len(ds.class_names) == num_classes
    assert ds.input_shape == (num_features,) and len(set(ds.group_names)) == num_groups
    if num_classes > 1:
        counts = torch.bincount(y, minlength=num_classes)
        assert int(counts.min()) > 0  # every class occurs


def test_group_sizes_follow_imbalance():
    sizes = group_sizes(100_000, 50, 1.5)
    assert sizes.sum() == 100_000 and (np.diff(sizes) <= 0).all()
    slope = np.polyfit(np.log(np.arange(1, 51)), np.log(sizes), 1)[0]
    assert slope == pytest.approx(-1.5, abs=0.02)
    equal = group_sizes(1003, 10, 0.0)
    assert equal.tolist() == [101, 101, 101] + [100] * 7
    ds = data.synthetic(num_groups=30, num_train=30_000, imbalance=1.0)
    counts = torch.bincount(ds.train.tensors[2], minlength=30).numpy()
    np.testing.assert_array_equal(counts, group_sizes(30_000, 30, 1.0))
    assert counts[0] / counts[29] == pytest.approx(30, rel=0.05)
    flat = torch.bincount(data.synthetic(num_groups=30, num_train=30_000, imbalance=0.0).train.tensors[2])
    assert int(flat.max()) == int(flat.min()) == 1000


def test_summary_reports_skew():
    s = data.synthetic(num_groups=10, num_train=1000, num_test=100, imbalance=2.0).summary()
    assert s["train"]["rows"] == 1000 and s["test"]["rows"] == 100
    assert s["train"]["groups_present"] == 10
    assert s["train"]["largest_group"] == "g0" and s["train"]["smallest_group"] == "g9"
    assert s["train"]["group_size_max"] / s["train"]["group_size_min"] == pytest.approx(10**2, rel=0.15)
    assert 0.4 < s["train"]["positive_rate"] < 0.6


def test_group_is_inferable_from_the_code_features():
    ds = data.synthetic(num_groups=200, num_train=4000, num_features=32, imbalance=0.0)
    x, _, g = ds.train.tensors
    code = x[:, :8]
    centroids = torch.zeros(200, 8).index_add_(0, g, code) / torch.bincount(g, minlength=200)[:, None]
    nearest = torch.cdist(code, centroids).argmin(1)
    assert (nearest == g).float().mean() > 0.99


def _least_squares_accuracy(z: torch.Tensor, y: torch.Tensor) -> float:
    target = (2 * y - 1).double()
    w = torch.linalg.lstsq(z.double(), target[:, None]).solution
    return float(((z.double() @ w).squeeze(1) > 0).eq(y.bool()).double().mean())


@pytest.mark.parametrize("effect", [0.0, 3.0])
def test_minority_effect_controls_group_specific_rules(effect):
    ds = data.synthetic(num_groups=5, num_train=20_000, num_features=16, minority_effect=effect, imbalance=0.0)
    x, y, g = ds.train.tensors
    z = x[:, 4:]  # the signal features (16 // 4 = 4 code features)
    pooled = _least_squares_accuracy(z, y)
    per_group = np.mean([_least_squares_accuracy(z[g == k], y[g == k]) for k in range(5)])
    if effect == 0.0:  # one rule for all: a single linear model is as good as one per group
        assert per_group - pooled < 0.01 and pooled > 0.8
    else:  # group-specific rules: the pooled model falls well behind
        assert per_group - pooled > 0.1 and per_group > 0.85


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_groups": 0}, ValueError, "num_groups"),
        ({"num_groups": 2.5}, TypeError, "num_groups"),
        ({"num_groups": True}, TypeError, "num_groups"),
        ({"num_train": 0}, ValueError, "num_train"),
        ({"num_test": -1}, ValueError, "num_test"),
        ({"num_features": 1}, ValueError, "num_features"),
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"minority_effect": -0.1}, ValueError, "minority_effect"),
        ({"minority_effect": float("nan")}, ValueError, "minority_effect"),
        ({"minority_effect": "1"}, TypeError, "minority_effect"),
        ({"imbalance": -1.0}, ValueError, "imbalance"),
        ({"imbalance": float("inf")}, ValueError, "imbalance"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": None}, TypeError, "seed"),
    ],
)
def test_argument_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        data.synthetic(**kwargs)


def test_empty_test_split_and_absent_groups():
    ds = data.synthetic(num_groups=50, num_train=20, num_test=0, imbalance=0.0)
    assert len(ds.test) == 0 and ds.summary()["test"]["groups_present"] == 0
    assert ds.summary()["train"]["groups_present"] == 20


def test_load_forwards_options(tmp_path):
    ds = data.load("synthetic", tmp_path, num_groups=7, num_train=100, num_test=10, seed=1)
    assert ds.num_groups == 7 and len(ds.train) == 100
    assert torch.equal(ds.train.tensors[0], data.synthetic(num_groups=7, num_train=100, num_test=10, seed=1).train.tensors[0])
    with pytest.raises(TypeError):
        data.load("synthetic", tmp_path, groups=3)
    assert data.is_fetched("synthetic", tmp_path)
    assert data.fetch("synthetic", tmp_path, progress=False) == tmp_path / "synthetic"
    assert not (tmp_path / "synthetic").exists()


def test_ten_thousand_groups_is_quick():
    start = time.perf_counter()
    ds = data.synthetic(num_groups=10_000, num_train=200_000, num_test=20_000, imbalance=0.5)
    elapsed = time.perf_counter() - start
    g = ds.train.tensors[2]
    assert ds.num_groups == 10_000 and len(ds.group_names) == 10_000 and ds.group_names[-1] == "g9999"
    assert int(g.max()) < 10_000 and ds.summary()["train"]["groups_present"] == 10_000
    assert elapsed < 5.0, f"generation took {elapsed:.1f}s"
