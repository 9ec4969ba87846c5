"""Tabular preprocessing shared by ``adult`` and ``census-kdd``.

- :func:`encode`: numeric columns (optionally ``log1p`` first) standardized with the train
  split's mean and standard deviation; categorical columns one-hot over the train split's
  sorted vocabulary, where a missing value (NaN) or a value unseen in train is all zeros.
- :func:`age_band` and :func:`cross_groups`: group ids as the cross product of protected
  attributes with fixed vocabularies, named ``"A/B/C"``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is imported where a table is read: not at `ceag --help`
    import pandas as pd

__all__ = ["AGE_BANDS", "age_band", "cross_groups", "encode"]

AGE_BANDS = ("<30", "30-44", "45-59", "60+")
_AGE_EDGES = (30, 45, 60)


def encode(
    train: pd.DataFrame,
    test: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    log1p: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Feature matrices (float32) for ``train`` and ``test`` and the feature names.

    Columns: ``numeric`` first (``log1p`` applied to those also in ``log1p``), then one block
    per ``categorical`` column named ``"column=value"``. Statistics and vocabularies come from
    ``train`` only.
    """
    import pandas as pd

    blocks_tr: list[np.ndarray] = []
    blocks_te: list[np.ndarray] = []
    names: list[str] = []
    for col in numeric:
        a = train[col].to_numpy(dtype=np.float64)
        b = test[col].to_numpy(dtype=np.float64)
        if np.isnan(a).any() or np.isnan(b).any():
            raise ValueError(f"numeric column {col!r} has missing values")
        if col in log1p:
            if (a < 0).any() or (b < 0).any():
                raise ValueError(f"log1p column {col!r} has negative values")
            a, b = np.log1p(a), np.log1p(b)
        mean, std = a.mean() if len(a) else 0.0, a.std() if len(a) else 1.0
        std = std if std > 0 else 1.0
        blocks_tr.append(((a - mean) / std)[:, None])
        blocks_te.append(((b - mean) / std)[:, None])
        names.append(col)
    for col in categorical:
        vocab = sorted(train[col].dropna().astype(str).unique())
        index = pd.Index(vocab, dtype="string")
        for df, blocks in ((train, blocks_tr), (test, blocks_te)):
            codes = index.get_indexer(df[col].astype("string"))  # -1: missing or unseen
            onehot = np.zeros((len(df), len(vocab)), dtype=np.float64)
            rows = np.nonzero(codes >= 0)[0]
            onehot[rows, codes[rows]] = 1.0
            blocks.append(onehot)
        names.extend(f"{col}={v}" for v in vocab)
    x_tr = np.concatenate(blocks_tr, axis=1).astype(np.float32) if blocks_tr else np.zeros((len(train), 0), np.float32)
    x_te = np.concatenate(blocks_te, axis=1).astype(np.float32) if blocks_te else np.zeros((len(test), 0), np.float32)
    return x_tr, x_te, names


def age_band(age: np.ndarray) -> np.ndarray:
    """Index into :data:`AGE_BANDS` (<30, 30-44, 45-59, 60+) of each age."""
    return np.digitize(np.asarray(age, dtype=np.float64), _AGE_EDGES).astype(np.int64)


def cross_groups(
    attributes: Sequence[tuple[str, np.ndarray, Sequence[str]]],
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Group ids of the cross product of attributes, and every group's name.

    ``attributes`` is a list of ``(attribute name, per-row value, vocabulary)``; a value is a
    vocabulary entry (str) or already its index (integer array). The id is row-major in the
    order given (the last attribute varies fastest) and the name joins the values with "/".
    Raises ValueError naming the attribute when a value is outside its vocabulary.
    """
    import pandas as pd

    ids: np.ndarray | None = None
    for attr, values, vocab in attributes:
        values = np.asarray(values)
        if values.dtype.kind in "iu":
            idx = values.astype(np.int64)
            bad = (idx < 0) | (idx >= len(vocab))
        else:
            idx = pd.Index(list(vocab), dtype="string").get_indexer(values.astype(str)).astype(np.int64)
            bad = idx < 0
        if bad.any():
            raise ValueError(f"{attr}: value {values[np.argmax(bad)]!r} is not one of {list(vocab)}")
        ids = idx if ids is None else ids * len(vocab) + idx
    names = tuple("/".join(parts) for parts in itertools.product(*(list(v) for _, _, v in attributes)))
    assert ids is not None, "cross_groups needs at least one attribute"
    return ids, names
