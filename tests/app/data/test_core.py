"""ceag.app.data core: names, data_dir, GroupedDataset checks and summary, tabular helpers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

import ceag.app.data as data
from ceag.app.data.core import cache_key
from ceag.app.data.tabular import AGE_BANDS, age_band, cross_groups, encode


def test_public_api():
    assert data.DATASETS == ("adult", "census-kdd", "fashion-mnist", "synthetic")
    assert issubclass(data.DataNotFoundError, FileNotFoundError)
    assert issubclass(data.DataCorruptError, RuntimeError)
    for name in data.__all__:
        assert getattr(data, name).__doc__ or name == "DATASETS"


@pytest.mark.parametrize("call", [data.load, data.fetch, data.is_fetched])
def test_unknown_name_lists_the_data_sets(call, tmp_path):
    with pytest.raises(ValueError, match="adult, census-kdd, fashion-mnist, synthetic"):
        call("mnist", tmp_path)


def test_real_data_sets_take_no_options(tmp_path):
    with pytest.raises(TypeError, match="num_groups"):
        data.load("adult", tmp_path, num_groups=3)


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CEAG_DATA", str(tmp_path / "env"))
    assert data.data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.data_dir() == tmp_path / "env"
    monkeypatch.delenv("CEAG_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.data_dir() == tmp_path / "home" / ".cache" / "ceag"
    assert data.data_dir("~/x") == tmp_path / "home" / "x"
    assert not (tmp_path / "home").exists()  # data_dir creates nothing


def test_cache_key_changes_with_version_and_files():
    a = cache_key(1, {"f": "00"})
    assert a.startswith("processed-v1-") and a.endswith(".pt")
    assert cache_key(1, {"f": "00"}) == a
    assert cache_key(2, {"f": "00"}) != a
    assert cache_key(1, {"f": "01"}) != a


def _dataset(**overrides):
    x = torch.zeros(6, 3)
    y = torch.tensor([0, 1, 1, 0, 1, 1])
    g = torch.tensor([0, 0, 0, 2, 2, 0])
    fields = dict(
        name="toy",
        train=TensorDataset(x, y, g),
        test=TensorDataset(x[:2], y[:2], torch.tensor([2, 2])),
        num_classes=2,
        num_groups=3,
        group_names=("a", "b", "c"),
        class_names=("neg", "pos"),
        input_shape=(3,),
        description="toy",
    )
    fields.update(overrides)
    return data.GroupedDataset(**fields)


def test_summary():
    s = _dataset().summary()
    assert s["num_groups"] == 3 and s["input_shape"] == [3] and s["num_features"] == 3
    tr = s["train"]
    assert tr["rows"] == 6 and tr["positive_rate"] == pytest.approx(4 / 6)
    assert tr["class_rates"] == {"neg": pytest.approx(2 / 6), "pos": pytest.approx(4 / 6)}
    assert tr["groups_present"] == 2  # group "b" is absent
    assert (tr["group_size_min"], tr["group_size_median"], tr["group_size_max"]) == (2, 3.0, 4)
    assert (tr["smallest_group"], tr["largest_group"]) == ("c", "a")
    assert s["test"]["groups_present"] == 1 and s["test"]["largest_group"] == "c"
    empty = _dataset(test=TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)))
    st = empty.summary()["test"]
    assert st["rows"] == 0 and st["groups_present"] == 0 and math.isnan(st["positive_rate"])


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"group_names": ("a", "b")}, ValueError),
        ({"class_names": ("x",)}, ValueError),
        ({"num_groups": 2, "group_names": ("a", "b")}, ValueError),  # group id 2 out of range
        ({"input_shape": (4,)}, ValueError),
        ({"train": TensorDataset(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))}, ValueError),
        (
            {
                "train": TensorDataset(
                    torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
                )
            },
            TypeError,
        ),
        ({"test": TensorDataset(torch.zeros(1, 3), torch.tensor([2]), torch.tensor([0]))}, ValueError),
    ],
)
def test_grouped_dataset_checks(overrides, error):
    with pytest.raises(error):
        _dataset(**overrides)


def test_payload_round_trip(tmp_path: Path):
    ds = _dataset()
    torch.save(ds.to_payload(), tmp_path / "p.pt")
    back = data.GroupedDataset.from_payload(torch.load(tmp_path / "p.pt", weights_only=True))
    assert back.group_names == ds.group_names and back.input_shape == ds.input_shape
    assert all(torch.equal(a, b) for a, b in zip(back.train.tensors, ds.train.tensors))


def test_encode_uses_train_statistics_only():
    train = pd.DataFrame({"n": [1.0, 2.0, 3.0], "m": [0.0, 0.0, 0.0], "c": ["b", "a", None], "e": [0.0, np.e - 1, 0.0]})
    test = pd.DataFrame({"n": [5.0], "m": [7.0], "c": ["z"], "e": [0.0]})
    x_tr, x_te, names = encode(train, test, ["n", "m", "e"], ["c"], log1p=["e"])
    assert names == ["n", "m", "e", "c=a", "c=b"]
    assert x_tr.dtype == np.float32
    sd = np.std([1.0, 2.0, 3.0])
    np.testing.assert_allclose(x_tr[:, 0], [-1 / sd, 0, 1 / sd], rtol=1e-6)
    assert x_te[0, 0] == pytest.approx(3 / sd, rel=1e-6)
    assert x_te[0, 1] == 7.0  # zero train variance: centred, divided by 1
    np.testing.assert_allclose(x_tr[:, 2], (np.array([0, 1, 0]) - 1 / 3) / np.std([0, 1, 0]), rtol=1e-6)
    np.testing.assert_array_equal(x_tr[:, 3:], [[0, 1], [1, 0], [0, 0]])  # None -> zeros
    np.testing.assert_array_equal(x_te[:, 3:], [[0, 0]])  # unseen -> zeros


def test_encode_rejects_missing_numeric():
    df = pd.DataFrame({"n": [1.0, np.nan]})
    with pytest.raises(ValueError, match="'n' has missing values"):
        encode(df, df, ["n"], [])


def test_age_band_edges():
    assert age_band(np.array([0, 29, 30, 44, 45, 59, 60, 90])).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert AGE_BANDS == ("<30", "30-44", "45-59", "60+")


def test_cross_groups():
    ids, names = cross_groups(
        [("r", np.array(["x", "y", "y"], dtype=object), ("x", "y")), ("band", np.array([0, 2, 1]), ("p", "q", "s"))]
    )
    assert names == ("x/p", "x/q", "x/s", "y/p", "y/q", "y/s")
    assert ids.tolist() == [0, 5, 4]
    with pytest.raises(ValueError, match="r: value 'w'"):
        cross_groups([("r", np.array(["w"], dtype=object), ("x", "y"))])
    with pytest.raises(ValueError, match="band"):
        cross_groups([("band", np.array([3]), ("p", "q", "s"))])
