"""Fixtures shared by the application's tests."""

from __future__ import annotations

import pytest


def _table(path, n=300, seed=0, swap=False):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"g": rng.choice(["a", "b"], n), "x1": rng.normal(0, 1, n), "x2": rng.normal(5, 3, n)})
    df["y"] = np.where(df["x1"] + 0.1 * df["x2"] > 0.5, "yes", "no")
    if swap:  # the same rows, two numeric columns in the other order
        df = df[["g", "x2", "x1", "y"]]
    df.to_csv(path, index=False)
    return path


_TABLE_ARGS = [
    "--label",
    "y",
    "--groups",
    "g",
    "--hidden",
    "8",
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
]


@pytest.fixture
def small_table():
    """(write a 300-row CSV table with groups "g" and label "y"; the CLI flags to train on it fast)."""
    return _table, _TABLE_ARGS
