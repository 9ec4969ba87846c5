"""Your own table (ceag.app.data.table): groups, split, encoding, errors, and the CLI path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ceag.app.cli import main
from ceag.app.data import load_table
from ceag.app.data.table import MAX_TABLE_GROUPS, GroupColumn, parse_group_columns
from ceag.errors import UsageError


def _frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "race": rng.choice(["Black", "White", "Asian"], n, p=[0.3, 0.6, 0.1]),
            "sex": rng.choice(["Female", "Male"], n),
            "age": rng.integers(18, 80, n),
            "hours": rng.normal(40, 10, n).round(1),
            "job": rng.choice(["a", "b", "c", "d"], n),
        }
    )
    df["approved"] = np.where(df["hours"] + rng.normal(0, 5, n) > 40, "yes", "no")
    return df


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "applicants.csv"
    _frame().to_csv(path, index=False)
    return path


def test_group_column_spec():
    assert parse_group_columns("race,sex,age:bins=25,45,65") == (
        GroupColumn("race"),
        GroupColumn("sex"),
        GroupColumn("age", (25.0, 45.0, 65.0)),
    )
    for bad in ["", "age:bins=x", "age:bin=3", "age:bins=5,3", "race,race"]:
        with pytest.raises(UsageError, match="groups"):
            parse_group_columns(bad)


def test_groups_are_intersections_with_bands(table):
    ds = load_table(table, "approved", "race,sex,age:bins=25,45,65")
    assert ds.class_names == ("no", "yes") and ds.num_classes == 2
    assert "Black/Female/25-45" in ds.group_names and "White/Male/65+" in ds.group_names
    assert all(len(name.split("/")) == 3 for name in ds.group_names)
    df = _frame()
    # every row lands in its own group: recompute one row's name by hand
    x, y, g = ds.train.tensors
    assert len(ds.group_names) <= 3 * 2 * 4 and int(g.max()) < ds.num_groups
    # features: age, hours standardised on train; race(3) sex(2) job(4) one-hot
    assert ds.input_shape == (2 + 3 + 2 + 4,)
    assert torch.allclose(x[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(x[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert len(ds.train) + len(ds.test) == len(df)


def test_split_is_stratified_seeded_and_keeps_singletons_in_train(tmp_path):
    df = _frame(500)
    df.loc[0, "race"] = "Lonely"  # a one-sample group
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    a = load_table(path, "approved", "race,sex", test_fraction=0.25, seed=3)
    b = load_table(path, "approved", "race,sex", test_fraction=0.25, seed=3)
    c = load_table(path, "approved", "race,sex", test_fraction=0.25, seed=4)
    assert all(torch.equal(s, t) for s, t in zip(a.test.tensors, b.test.tensors))
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])
    train_counts = torch.bincount(a.train.tensors[2], minlength=a.num_groups)
    test_counts = torch.bincount(a.test.tensors[2], minlength=a.num_groups)
    lonely = a.group_names.index("Lonely/" + df.loc[0, "sex"])
    assert (train_counts[lonely], test_counts[lonely]) == (1, 0)
    total = train_counts + test_counts
    big = total >= 20
    assert torch.allclose(test_counts[big].float() / total[big].float(), torch.full((int(big.sum()),), 0.25), atol=0.03)


def test_test_file_and_groups_only_in_test(tmp_path):
    train, test = _frame(300, 0), _frame(100, 1)
    test.loc[:4, "race"] = "Pacific"
    test.loc[:4, "job"] = "unseen"
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    ds = load_table(tmp_path / "train.csv", "approved", "race", test=tmp_path / "test.csv")
    assert "Pacific" in ds.group_names  # reported, not dropped
    pid = ds.group_names.index("Pacific")
    assert int((ds.train.tensors[2] == pid).sum()) == 0 and int((ds.test.tensors[2] == pid).sum()) == 5
    # an unseen category encodes as zeros in its one-hot block
    assert len(ds.test) == 100 and ds.test.tensors[0].shape[1] == ds.input_shape[0]


def test_parquet_equals_csv(tmp_path, table):
    pytest.importorskip("pyarrow")
    pq = tmp_path / "applicants.parquet"
    pd.read_csv(table).to_parquet(pq)
    a, b = load_table(table, "approved", "race,sex"), load_table(pq, "approved", "race,sex")
    assert a.group_names == b.group_names
    assert all(torch.allclose(s.float(), t.float()) for s, t in zip(a.train.tensors, b.train.tensors))


def test_missing_values(tmp_path):
    df = _frame()
    df.loc[3, "hours"] = np.nan
    df.loc[5, "job"] = np.nan
    df.loc[7, "race"] = np.nan
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    with pytest.raises(UsageError, match="feature column '(race|hours|job)' has 1 missing values.*--impute mean"):
        load_table(path, "approved", "sex", test_fraction=0.5)
    ds = load_table(path, "approved", "race,sex", impute="mean", test_fraction=0.5)
    assert torch.isfinite(ds.train.tensors[0]).all() and torch.isfinite(ds.test.tensors[0]).all()
    assert any(n.startswith("NA/") for n in ds.group_names)  # its own level
    with pytest.raises(UsageError, match="group column 'race' has 1 missing values"):
        load_table(path, "approved", "race,sex", impute="mean", missing_groups="error")


@pytest.mark.parametrize(
    "change, kwargs, message",
    [
        (None, {"label": "nope"}, "has no column 'nope'"),
        (None, {"groups": "race,zip"}, "has no column 'zip'"),
        (lambda d: d.assign(approved="yes"), {}, "one class"),
        (lambda d: d.assign(approved=d["hours"] / 7), {}, "non-integer numbers"),
        (lambda d: d.assign(approved=d["approved"].where(d.index != 2)), {}, "label column 'approved' has 1 missing"),
        (None, {"groups": "hours:bins=30,50", "features": ["race", "hours"]}, None),
        (lambda d: d.assign(race=d["race"].where(d.index != 1, "x")), {"groups": "race:bins=3"}, "non-numeric"),
        (None, {"features": ["approved"]}, "cannot be a feature"),
        (None, {"test_fraction": 1.5}, "test_fraction must be in"),
    ],
)
def test_bad_tables_name_the_column(tmp_path, change, kwargs, message):
    df = _frame() if change is None else change(_frame())
    path = tmp_path / "b.csv"
    df.to_csv(path, index=False)
    args = {"label": "approved", "groups": "race,sex", **kwargs}
    if message is None:
        assert load_table(path, **args).num_groups == 3
        return
    with pytest.raises(UsageError, match=message):
        load_table(path, **args)


def test_missing_file_and_too_many_groups(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_table(tmp_path / "none.csv", "y", "g")
    n = MAX_TABLE_GROUPS + 1
    pd.DataFrame({"id": np.arange(n), "x": np.zeros(n), "y": np.arange(n) % 2}).to_csv(tmp_path / "ids.csv", index=False)
    with pytest.raises(UsageError, match=f"make {n} groups, more than {MAX_TABLE_GROUPS}"):
        load_table(tmp_path / "ids.csv", "y", "id", test_fraction=0.01)


def test_cli_runs_your_table(tmp_path, table, capsys):
    argv = [
        "compare",
        "--data",
        str(table),
        "--label",
        "approved",
        "--groups",
        "race,sex",
        "--methods",
        "nft,ceag",
        "--seeds",
        "0",
        "--hidden",
        "16",
        "--dense-epochs",
        "1",
        "--pruning-epochs",
        "1",
        "--mitigation-epochs",
        "1",
        "--min-count",
        "5",
        "--no-progress",
        "--no-plots",
        "--output",
        str(tmp_path / "runs"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| NFT |" in out and "| CEAG |" in out
    assert (tmp_path / "runs" / "applicants-nft-ceag-s90" / "results.md").exists()
    with pytest.raises(SystemExit) as exc:
        main([*argv[:7], "--dataset", "adult", "--output", str(tmp_path / "x")])
    assert exc.value.code == 2 and "--data and --dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--data", str(table), "--label", "approved", "--output", str(tmp_path / "x")])
    assert "--data needs --label" in capsys.readouterr().err


def test_label_values_are_stripped(tmp_path):
    """'no', 'no ', 'yes', 'yes ' are two classes, as group values are stripped (issue 24, bad 7)."""
    df = _frame()
    df["approved"] = [v + (" " if i % 3 == 0 else "") for i, v in enumerate(df["approved"])]
    df.to_csv(tmp_path / "t.csv", index=False)
    ds = load_table(tmp_path / "t.csv", "approved", "race,sex")
    assert ds.class_names == ("no", "yes")
    clean = load_table_frame(tmp_path, _frame())
    assert torch.equal(ds.train.tensors[1], clean.train.tensors[1])


def load_table_frame(tmp_path, df, name="clean.csv", **kwargs):
    df.to_csv(tmp_path / name, index=False)
    return load_table(tmp_path / name, kwargs.pop("label", "approved"), kwargs.pop("groups", "race,sex"), **kwargs)


def test_identifier_columns_are_left_out_or_refused(tmp_path):
    """A unique string ID would one-hot to a column per row (N² memory): left out with a note
    naming it by default, refused when named in --features (issue 24, bad 8)."""
    df = _frame(2000)
    df.insert(0, "applicant", [f"A{i:05d}" for i in range(len(df))])
    ds = load_table_frame(tmp_path, df)
    plain = load_table_frame(tmp_path, _frame(2000), name="plain.csv")
    assert ds.input_shape == plain.input_shape  # the id is not a feature
    (note,) = [n for n in ds.notes if "identifiers" in n]
    assert "'applicant' (2000 values)" in note
    assert not any("identifiers" in n for n in plain.notes)
    with pytest.raises(UsageError, match="feature column 'applicant' has 2000 distinct values in 2000 rows.*identifier"):
        load_table_frame(tmp_path, df, features=["applicant", "hours"])
    # Many levels but not one per row: kept unless the one-hot width passes the cap.
    df = _frame(2000).assign(city=[f"c{i % 300}" for i in range(2000)])
    assert load_table_frame(tmp_path, df).input_shape[0] == plain.input_shape[0] + 300
    import ceag.app.data.table as table_mod

    cap = table_mod.MAX_ENCODED_COLUMNS
    try:
        table_mod.MAX_ENCODED_COLUMNS = 100
        with pytest.raises(UsageError, match=r"one-hot encode to 3\d\d columns.*'city' \(300 values\)"):
            load_table_frame(tmp_path, df)
    finally:
        table_mod.MAX_ENCODED_COLUMNS = cap


@pytest.mark.parametrize(
    "edit, kwargs, message",
    [
        # issue 24, ugly: each once a traceback, a silent surprise or a vague message
        (None, {"features": []}, "--features must name one or more columns"),
        (None, {"features": ["hours", "hours"]}, "--features names 'hours' twice"),
        (lambda d: d.assign(hours=d["hours"].where(d.index != 4, np.inf)), {}, "feature column 'hours' holds inf"),
        (lambda d: d.assign(hours=d["hours"].where(d.index != 4, 1e308)), {}, "feature column 'hours' holds 1e\\+308"),
    ],
)
def test_hostile_tables_name_the_column(tmp_path, edit, kwargs, message):
    df = _frame() if edit is None else edit(_frame())
    with pytest.raises(UsageError, match=message):
        load_table_frame(tmp_path, df, **kwargs)


def test_hostile_header_and_test_file(tmp_path):
    """Repeated and space-padded header names; a test file that lacks a column, holds text in
    a numeric one, or a class the training rows lack (issue 24, ugly)."""
    df = _frame()
    (tmp_path / "dup.csv").write_text(df.to_csv(index=False).replace("sex", "race", 1))
    with pytest.raises(UsageError, match="two columns named 'race'"):
        load_table(tmp_path / "dup.csv", "approved", "race")
    (tmp_path / "pad.csv").write_text(df.to_csv(index=False).replace("race", "race ", 1))
    assert load_table(tmp_path / "pad.csv", "approved", "race,sex").num_groups == 6
    train, test = _frame(300), _frame(100, seed=1)
    train.to_csv(tmp_path / "train.csv", index=False)
    for edit, message in (
        (lambda d: d.drop(columns="job"), "test file .* has no column 'job', a feature of data file"),
        (
            lambda d: d.assign(hours=d["hours"].astype(str).where(d.index != 2, "twelve")),
            "numeric in data file .* holds 'twelve' in test file",
        ),
        (
            lambda d: d.assign(approved=d["approved"].where(d.index != 3, "maybe")),
            "test file .* has classes the training rows lack \\('maybe'\\)",
        ),
    ):
        edit(test).to_csv(tmp_path / "test.csv", index=False)
        with pytest.raises(UsageError, match=message):
            load_table(tmp_path / "train.csv", "approved", "race,sex", test=tmp_path / "test.csv")


def test_notes_say_what_the_loader_chose(tmp_path):
    """Protected columns as features, groups only in test or with no test rows, a missing
    group value as its own level even though the group column is a feature (issue 24, ugly)."""
    df = _frame()
    df.loc[7, "race"] = np.nan  # its own level NA, also as a feature (it was refused as a missing feature)
    ds = load_table_frame(tmp_path, df)
    assert any(n.startswith("NA/") for n in ds.group_names)
    assert any("group columns 'race', 'sex' are also features" in n for n in ds.notes)
    assert not any("also features" in n for n in load_table_frame(tmp_path, df, features=["hours", "age"]).notes)
    train, test = _frame(300), _frame(100, seed=1)
    train = train[train["race"] != "Asian"].copy()
    train.loc[train.index[:5], "sex"] = "Unknown"  # a group with training rows only
    test.loc[test.index[:20], "sex"] = "Other"
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    notes = load_table(tmp_path / "train.csv", "approved", "race,sex", test=tmp_path / "test.csv").notes
    assert any("have test rows but no training rows" in n for n in notes)
    assert any("groups have no test rows" in n for n in notes)


def test_empty_bands_and_test_flags(tmp_path, table, capsys):
    """Bins that cover no value get a note; --test with --test-fraction is refused, not half-ignored."""
    ds = load_table(table, "approved", "race,age:bins=18,200,300")
    assert any("'age': the bands <18, 200-300, 300+ hold no rows" in n for n in ds.notes)
    assert not any("bands" in n for n in load_table(table, "approved", "race,age:bins=30,50").notes)
    for argv in (
        ["run", "--data", str(table), "--label", "approved", "--groups", "race", "--test", str(table), "--test-fraction", "0.3"],
        ["run", "--dataset", "adult", "--test-fraction", "0.3"],
    ):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--output", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "--test-fraction" in err and "Traceback" not in err
