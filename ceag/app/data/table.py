"""Your own table: a CSV or Parquet file with a label column and one or more group columns.

    load_table("applicants.csv", label="approved", groups=("race", "sex", "age:bins=25,45,65"))

- **Groups.** The group id is the intersection of the group columns, named like
  ``Black/Female/25-45``. A numeric group column is cut into bands when asked
  (``age:bins=25,45,65`` gives ``<25``, ``25-45``, ``45-65``, ``65+``). Every group seen in
  train or test gets an id, so a group present only in test is reported, not dropped. A
  missing value in a group column becomes its own level ``NA`` (``missing_groups="level"``)
  or an error naming the column (``"error"``).
- **Split.** ``test`` (a second file with the same columns), or ``test_fraction`` of every
  group drawn at random with ``seed`` (a group of one sample stays in train).
- **Features.** ``features`` (default: every other column). Categorical columns are one-hot
  encoded and numeric ones standardised by scikit-learn's ``ColumnTransformer``, fitted on
  the training rows only; a category seen only in test encodes as all zeros. Missing
  feature values are refused, naming the column (``impute="refuse"``), or imputed from the
  training rows (``"mean"``: numeric mean, categorical most frequent). When ``features`` is
  not given, text columns with a distinct value in most rows (identifiers) are left out, and
  the data set's ``notes`` name them; named in ``features`` they are refused.
- **Label.** Classification: the label's distinct values are the classes (sorted). A label
  with one class, missing labels, or non-integer numbers (a regression target) are refused.

Every error is a :class:`~ceag.errors.UsageError` naming the file or column.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ceag.app.data.core import GroupedDataset, sha256_file
from ceag.errors import UsageError

__all__ = ["DEFAULT_TEST_FRACTION", "MAX_ENCODED_COLUMNS", "MAX_TABLE_GROUPS", "GroupColumn", "load_table", "parse_group_columns"]

#: More intersectional groups than this is refused (a typo such as an id column as a group).
MAX_TABLE_GROUPS = 100_000
IMPUTE = ("refuse", "mean")
#: The share of every group held out for test when no test file is given.
DEFAULT_TEST_FRACTION = 0.2
MISSING_GROUPS = ("level", "error")
_MISSING_LEVEL = "NA"


@dataclass(frozen=True)
class GroupColumn:
    """A group column, and the band edges when a numeric column is cut into bands."""

    name: str
    bins: tuple[float, ...] = ()

    def __str__(self) -> str:
        return self.name + (":bins=" + ",".join(f"{b:g}" for b in self.bins) if self.bins else "")


def parse_group_columns(spec: str | Sequence[str]) -> tuple[GroupColumn, ...]:
    """``"race,sex,age:bins=25,45,65"`` (or a list of such items) as group columns: numbers
    after a ``bins=`` item are its further edges."""
    items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    out: list[GroupColumn] = []
    for raw in (t.strip() for t in items):
        if not raw:
            continue
        if out and out[-1].bins and _is_number(raw):
            out[-1] = GroupColumn(out[-1].name, (*out[-1].bins, float(raw)))
            continue
        name, _, option = raw.partition(":")
        bins: tuple[float, ...] = ()
        if option:
            key, _, value = option.partition("=")
            if key.strip() != "bins" or not _is_number(value):
                raise UsageError(f"groups: {raw!r} is not COLUMN or COLUMN:bins=E1,E2,... (band edges)")
            bins = (float(value),)
        out.append(GroupColumn(name.strip(), bins))
    if not out:
        raise UsageError("groups: name at least one group column")
    for col in out:
        if any(not math.isfinite(b) for b in col.bins) or list(col.bins) != sorted(set(col.bins)):
            raise UsageError(f"groups: the band edges of {col.name!r} must be finite and increasing, got {list(col.bins)}")
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise UsageError(f"groups: a column is named twice in {names}")
    return tuple(out)


def _is_number(text: str) -> bool:
    return re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", text) is not None


def _read(path: str | os.PathLike, what: str):
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise UsageError(f"{what} {path}: expected a .csv or .parquet file")
    except UsageError:
        raise
    except (ValueError, OSError, ImportError) as err:
        raise UsageError(f"{what} {path} cannot be read: {err}") from None
    if df.empty:
        raise UsageError(f"{what} {path} has no rows")
    header = _header(path) if suffix == ".csv" else []
    header = header if len(header) == len(df.columns) else [str(c) for c in df.columns]
    names = [c.strip() for c in header]  # "race " is the column race, as values are stripped
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise UsageError(f"{what} {path} has two columns named {twice[0]!r}; rename one")
    df.columns = names
    return df


def _header(path: Path) -> list[str]:
    """The CSV's column names as written (pandas renames a repeated name to ``race.1``)."""
    import csv

    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        return next(csv.reader(f), [])


def _group_values(df, columns: Sequence[GroupColumn], missing: str, where: str) -> list[str]:
    """One name per row: the group columns' values (banded where asked) joined with '/'."""
    import pandas as pd

    parts = []
    for col in columns:
        values = df[col.name]
        blank = values.isna() | (values.astype(str).str.strip() == "")
        if blank.any() and missing == "error":
            raise UsageError(
                f"group column {col.name!r} has {int(blank.sum())} missing values in {where}; "
                "use --missing-groups level to make them their own group, or fill them in"
            )
        if col.bins:
            numeric = pd.to_numeric(values, errors="coerce")
            if (numeric.isna() & ~blank).any():
                raise UsageError(
                    f"group column {col.name!r} is cut into bands (bins=...) but holds non-numeric values in {where}"
                )
            labels = _band_labels(col.bins)
            idx = np.searchsorted(np.asarray(col.bins), numeric.to_numpy(dtype=float), side="right")
            text = pd.Series([labels[i] for i in idx], index=df.index)
        else:
            text = values.astype(str).str.strip()
        parts.append(text.where(~blank, _MISSING_LEVEL))
    joined = parts[0]
    for p in parts[1:]:
        joined = joined + "/" + p
    return joined.tolist()


def _band_labels(edges: Sequence[float]) -> list[str]:
    inner = [f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])]
    return [f"<{edges[0]:g}", *inner, f"{edges[-1]:g}+"]


def _labels(train, test, label: str, where: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    import pandas as pd

    for df, w in zip((train, test), where):
        missing = int(df[label].isna().sum())
        if missing:
            raise UsageError(f"label column {label!r} has {missing} missing values in {w}")
    both = pd.concat([train[label], test[label]])
    if pd.api.types.is_float_dtype(both) and not np.all(np.equal(np.mod(both.to_numpy(), 1), 0)):
        raise UsageError(
            f"label column {label!r} holds non-integer numbers (a regression target?); ceag trains classifiers: "
            "give it class labels"
        )
    if pd.api.types.is_numeric_dtype(both) and not pd.api.types.is_bool_dtype(both):
        classes = sorted(set(both.tolist()))
        names = tuple(f"{c:g}" if isinstance(c, float) else str(c) for c in classes)
    else:
        # Stripped, as group values are: 'yes' and 'yes ' are one class.
        classes = sorted(set(both.astype(str).str.strip().tolist()))
        names = tuple(classes)
        train, test = (df.assign(**{label: df[label].astype(str).str.strip()}) for df in (train, test))
    if len(classes) < 2:
        raise UsageError(f"label column {label!r} has one class ({names[0]!r}): nothing to classify")
    index = {c: i for i, c in enumerate(classes)}
    return (np.array([index[v] for v in train[label].tolist()]), np.array([index[v] for v in test[label].tolist()]), names)


#: A text column with more distinct values than this share of the rows (and at least
#: ``_MIN_ID_LEVELS``) looks like an identifier: one-hot would give a column per row.
_ID_SHARE = 0.5
_MIN_ID_LEVELS = 50
#: One-hot columns a table may grow to; past it the widest text columns are named.
MAX_ENCODED_COLUMNS = 20_000


def _is_numeric(col) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


#: Numeric feature values beyond this cannot be standardised in float32 (their square overflows).
_MAX_ABS_VALUE = 1e18


def _check_numeric(train, test, feats: Sequence[str], where: tuple[str, str]) -> None:
    """A numeric feature (by its training rows) must be numbers in the test rows too, finite
    and small enough to standardise: each error names the column and a value."""
    import pandas as pd

    for f in feats:
        if not _is_numeric(train[f]):
            continue
        for df, w in zip((train, test), where):
            values = pd.to_numeric(df[f], errors="coerce")
            text = df[f].notna() & values.isna()
            if text.any():
                raise UsageError(f"feature column {f!r} is numeric in {where[0]} but holds {df[f][text].iloc[0]!r} in {w}")
            number = values.to_numpy(dtype=float)
            bad = np.isinf(number) | (np.abs(number) > _MAX_ABS_VALUE)  # NaN (missing) is neither
            if bad.any():
                raise UsageError(
                    f"feature column {f!r} holds {number[bad][0]:g} in {w}: values must be finite and at most "
                    f"{_MAX_ABS_VALUE:g} in size (rescale the column, or leave it out with --features)"
                )


def _without_identifiers(df, feats: list[str], *, chosen: bool, where: str) -> tuple[list[str], dict[str, int]]:
    """``feats`` less the text columns that look like identifiers, and those dropped (name ->
    distinct values). Columns the user chose with ``features`` are refused instead of dropped;
    a one-hot width over :data:`MAX_ENCODED_COLUMNS` is refused naming the widest columns."""
    levels = {f: int(df[f].nunique()) for f in feats if not _is_numeric(df[f])}
    ids = {f: n for f, n in levels.items() if n >= max(_MIN_ID_LEVELS, _ID_SHARE * len(df))}
    if ids and chosen:
        name, n = next(iter(ids.items()))
        raise UsageError(
            f"feature column {name!r} has {n} distinct values in {len(df)} rows of {where}: an identifier? "
            "One-hot encoding would give it a column per row; leave it out of --features"
        )
    kept = [f for f in feats if f not in ids]
    width = sum(n for f, n in levels.items() if f not in ids)
    if width > MAX_ENCODED_COLUMNS:
        widest = sorted(((n, f) for f, n in levels.items() if f not in ids), reverse=True)[:3]
        raise UsageError(
            f"the text feature columns of {where} would one-hot encode to {width} columns (more than "
            f"{MAX_ENCODED_COLUMNS}); the widest: {', '.join(f'{f!r} ({n} values)' for n, f in widest)}. "
            "Leave them out with --features, or bin them"
        )
    return kept, ids


def _feature_names(encoder) -> tuple[str, ...]:
    """The encoded columns as "age" (numeric) and "race=White" (one-hot), in input order."""
    names = []
    for kind, pipe, cols in encoder.transformers_:
        if kind == "numeric":
            names += list(cols)
        elif kind == "categorical" and len(cols):
            onehot = pipe.steps[-1][1]
            names += [f"{c}={v}" for c, values in zip(cols, onehot.categories_) for v in values]
    return tuple(names)


def _notes(
    name: str,
    chosen: Sequence[str] | None,
    feats: Sequence[str],
    columns: Sequence[GroupColumn],
    dropped: dict[str, int],
    train_names: Sequence[str],
    test_names: Sequence[str],
    class_names: Sequence[str],
) -> tuple[str, ...]:
    """One line for each choice the loader made that the user should know of."""
    notes = []
    if dropped:
        notes.append(f"data file {name}: {_dropped_text(dropped)}")
    protected = [c.name for c in columns if c.name in feats]
    if protected and chosen is None:
        notes.append(
            f"the group columns {', '.join(map(repr, protected))} are also features (the default: every column but "
            "the label); name the features with --features to leave them out"
        )
    names = set(train_names) | set(test_names)
    for i, col in enumerate(columns):
        used = {n.split("/")[i] for n in names}
        empty = [b for b in _band_labels(col.bins) if b not in used] if col.bins else []
        if empty:
            notes.append(f"group column {col.name!r}: the bands {', '.join(empty)} hold no rows (check bins=)")
    train_groups, test_groups = set(train_names), set(test_names)
    only_test = sorted(test_groups - train_groups)
    if only_test:
        notes.append(
            f"{len(only_test)} group(s) have test rows but no training rows (e.g. {only_test[0]!r}): "
            "they are reported, never trained on"
        )
    no_test = len(train_groups - test_groups)
    if no_test:
        notes.append(f"{no_test} of {len(train_groups)} groups have no test rows: the test split cannot judge them")
    if len(class_names) > max(100, len(train_names) // 5):
        notes.append(f"the label has {len(class_names)} classes for {len(train_names)} training rows: is it an identifier?")
    return tuple(notes)


def _dropped_text(dropped: dict[str, int]) -> str:
    return "left out as identifiers (a distinct value in most rows): " + ", ".join(
        f"{name!r} ({n} values)" for name, n in dropped.items()
    )


def _encoder(train, features: Sequence[str], impute: str):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f for f in features if _is_numeric(train[f])]
    categorical = [f for f in features if f not in numeric]
    num_steps = [SimpleImputer(strategy="mean")] if impute == "mean" else []
    cat_steps = [SimpleImputer(strategy="most_frequent")] if impute == "mean" else []
    return ColumnTransformer(
        [
            ("numeric", make_pipeline(*num_steps, StandardScaler()), numeric),
            ("categorical", make_pipeline(*cat_steps, OneHotEncoder(handle_unknown="ignore", sparse_output=False)), categorical),
        ],
        sparse_threshold=0.0,
    ), categorical


def _feature_columns(train_df, test_df, label: str, columns, features, paths) -> tuple[list[str], dict[str, int]]:
    """The feature columns (``features``, else every column but the label, less identifier-like
    text columns) and those left out; every named column checked to exist in both files."""
    path, test = paths
    for df, what in ((train_df, f"data file {path}"), (test_df, f"test file {test}")):
        if df is None:
            continue
        for col in [label, *(c.name for c in columns), *(features or ())]:
            if col not in df.columns:
                raise UsageError(f"{what} has no column {col!r}; its columns are {list(df.columns)}")
    if label in {c.name for c in columns}:
        raise UsageError(f"the label column {label!r} is also a group column")
    feats = list(features) if features is not None else [c for c in train_df.columns if c != label]
    if label in feats:
        raise UsageError(f"the label column {label!r} cannot be a feature")
    if not feats:
        raise UsageError("no feature columns: the table holds only the label")
    feats, dropped = _without_identifiers(train_df, feats, chosen=features is not None, where=f"data file {path}")
    if not feats:
        raise UsageError(f"no feature columns left: {_dropped_text(dropped)}")
    if test_df is not None:
        lacking = [f for f in feats if f not in test_df.columns]
        if lacking:
            raise UsageError(f"test file {test} has no column {lacking[0]!r}, a feature of data file {path}")
    return feats, dropped


def _split_rows(train_df, test_df, columns, missing_groups: str, test_fraction: float, seed: int, paths):
    """(train rows, test rows, their group names): the test file's, or ``test_fraction`` of
    every group drawn with ``seed``."""
    path, test = paths
    if test_df is None:
        names = _group_values(train_df, columns, missing_groups, f"data file {path}")
        _check_group_count(names, columns)
        is_test = _split(names, test_fraction, seed)
        test_df, train_df = train_df[is_test].reset_index(drop=True), train_df[~is_test].reset_index(drop=True)
        test_names = [n for n, t in zip(names, is_test) if t]
        train_names = [n for n, t in zip(names, is_test) if not t]
    else:
        train_names = _group_values(train_df, columns, missing_groups, f"data file {path}")
        test_names = _group_values(test_df, columns, missing_groups, f"test file {test}")
    if len(train_df) == 0:
        raise UsageError(f"data file {path}: no training rows left after the test split")
    return train_df, test_df, train_names, test_names


def _checked_features(train_df, test_df, feats: Sequence[str], columns, missing_groups: str, impute: str, where):
    """Both splits with a missing group value as its own level where the group column is a
    feature; numeric features checked; missing feature values refused unless imputed."""
    if missing_groups == "level":
        fill = {c.name: _MISSING_LEVEL for c in columns if c.name in feats and not _is_numeric(train_df[c.name])}
        train_df, test_df = train_df.fillna(fill), test_df.fillna(fill)
    _check_numeric(train_df, test_df, feats, where)
    for df, w in zip((train_df, test_df), where):
        bad = [f for f in feats if df[f].isna().any()] if impute == "refuse" else []
        if bad:
            raise UsageError(
                f"feature column {bad[0]!r} has {int(df[bad[0]].isna().sum())} missing values in {w}"
                + (f" (and {len(bad) - 1} more columns)" if len(bad) > 1 else "")
                + "; use --impute mean, or clean the table"
            )
    return train_df, test_df


def load_table(
    path: str | os.PathLike,
    label: str,
    groups: str | Sequence[str],
    *,
    test: str | os.PathLike | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    features: Sequence[str] | None = None,
    missing_groups: str = "level",
    impute: str = "refuse",
    seed: int = 0,
) -> GroupedDataset:
    """The table at ``path`` as a :class:`GroupedDataset` (see the module docstring)."""
    check_table_options(
        path=path,
        label=label,
        groups=groups,
        test=test,
        test_fraction=test_fraction,
        features=features,
        missing_groups=missing_groups,
        impute=impute,
        seed=seed,
    )
    columns = parse_group_columns(groups)
    train_df = _read(path, "data file")
    test_df = _read(test, "test file") if test is not None else None
    feats, dropped = _feature_columns(train_df, test_df, label, columns, features, (path, test))
    train_df, test_df, train_names, test_names = _split_rows(
        train_df, test_df, columns, missing_groups, test_fraction, seed, (path, test)
    )
    where = (f"data file {path}", f"test file {test}" if test is not None else "the test split")
    train_df, test_df = _checked_features(train_df, test_df, feats, columns, missing_groups, impute, where)
    y_train, y_test, class_names = _labels(train_df, test_df, label, where)
    unseen = sorted(set(y_test.tolist()) - set(y_train.tolist()))
    if unseen:
        raise UsageError(
            f"label column {label!r}: {where[1]} has classes the training rows lack "
            f"({', '.join(repr(class_names[i]) for i in unseen[:3])}); a model cannot learn them"
        )

    _check_group_count([*train_names, *test_names], columns)
    group_names = tuple(sorted(set(train_names) | set(test_names)))
    gid = {n: i for i, n in enumerate(group_names)}

    encoder, categorical = _encoder(train_df, feats, impute)
    cast = {f: train_df[f].astype(str).where(train_df[f].notna()) for f in categorical}
    x_train = encoder.fit_transform(train_df[feats].assign(**cast))
    cast = {f: test_df[f].astype(str).where(test_df[f].notna()) for f in categorical}
    x_test = encoder.transform(test_df[feats].assign(**cast)) if len(test_df) else np.zeros((0, x_train.shape[1]))

    def split(x, y, names):
        return TensorDataset(
            torch.as_tensor(np.asarray(x, dtype=np.float32)),
            torch.as_tensor(y, dtype=torch.int64),
            torch.as_tensor([gid[n] for n in names], dtype=torch.int64),
        )

    return GroupedDataset(
        name=Path(path).stem,
        train=split(x_train, y_train, train_names),
        test=split(x_test, y_test, test_names),
        num_classes=len(class_names),
        num_groups=len(group_names),
        group_names=group_names,
        class_names=class_names,
        input_shape=(int(x_train.shape[1]),),
        description=(
            f"{Path(path).name}: label {label!r}, groups {'/'.join(str(c) for c in columns)}, "
            f"{len(feats)} feature columns ({len(categorical)} one-hot), {len(train_df)} train and {len(test_df)} test rows"
        ),
        notes=_notes(Path(path).name, features, feats, columns, dropped, train_names, test_names, class_names),
        source_digest=table_digest({"path": path, "test": test}),
        feature_names=_feature_names(encoder),
    )


def _split(names: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Which rows go to test: round(fraction · n_g) random rows of every group of n_g ≥ 2."""
    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(np.asarray(names, dtype=object).astype(str), return_inverse=True, return_counts=True)
    # A random order within each group: sort by (group, random key); the first k_g of each go to test.
    order = np.lexsort((rng.random(len(names)), inverse))
    k = np.where(counts >= 2, np.minimum(np.rint(fraction * counts).astype(int), counts - 1), 0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(names)) - np.repeat(starts, counts)  # position within its group, in sorted order
    is_test = np.zeros(len(names), dtype=bool)
    is_test[order] = rank < np.repeat(k, counts)
    return is_test


def _check_group_count(names: Sequence[str], columns: Sequence[GroupColumn]) -> None:
    count = len(set(names))
    if count > MAX_TABLE_GROUPS:
        raise UsageError(f"the group columns {[c.name for c in columns]} make {count} groups, more than {MAX_TABLE_GROUPS}")


def check_known_and_required(what: str, options: dict[str, Any], allowed: set[str], required: Sequence[str], flags: str) -> None:
    """UsageError for an option outside ``allowed``, a missing ``required`` one, or bad ``groups``."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UsageError(f"{what}: unknown option(s) {unknown}; expected some of {sorted(allowed)}")
    for name in required:
        if not options.get(name):
            raise UsageError(f"{what}: {name} is required ({flags})")
    parse_group_columns(options["groups"])


def check_table_options(**options: Any) -> None:
    """:func:`load_table`'s arguments checked without reading the file (UsageError naming one)."""
    allowed = {"path", "label", "groups", "test", "test_fraction", "features", "missing_groups", "impute", "seed"}
    check_known_and_required("table", options, allowed, ("path", "label", "groups"), "--data, --label, --groups")
    fraction = options.get("test_fraction", DEFAULT_TEST_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise UsageError(f"test_fraction must be in (0, 1), got {fraction!r}")
    if options.get("missing_groups", "level") not in MISSING_GROUPS:
        raise UsageError(f"missing_groups must be one of {', '.join(MISSING_GROUPS)}, got {options['missing_groups']!r}")
    if options.get("impute", "refuse") not in IMPUTE:
        raise UsageError(f"impute must be one of {', '.join(IMPUTE)}, got {options['impute']!r}")
    seed = options.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"table: seed must be an integer >= 0, got {seed!r}")
    features = options.get("features")
    if features is not None:
        if not features or any(not isinstance(f, str) or not f.strip() for f in features):
            raise UsageError(f"--features must name one or more columns, got {features!r}")
        twice = sorted({f for f in features if list(features).count(f) > 1})
        if twice:
            raise UsageError(f"--features names {twice[0]!r} twice")
    for name in ("path", "test"):
        p = options.get(name)
        if p is not None and not Path(p).is_file():
            raise UsageError(f"{'data' if name == 'path' else 'test'} file {p} does not exist")


def table_digest(options: dict[str, Any]) -> str:
    """SHA-256 of the table file(s): part of the dense-model cache key, so an edited file
    never reuses a model trained on the old one."""
    h = hashlib.sha256()
    for name in ("path", "test"):
        if options.get(name) is not None:
            h.update(sha256_file(options[name]).encode())
    return h.hexdigest()
