"""A 700-row table, end to end: `ceag run` against a plain PyTorch script on the same file.

The table: 1,000 rows (700 train, 300 test), 6 groups, 3 numeric and 1 categorical feature,
a binary label (seeded). ``ceag run --method ceag`` with its defaults (8 dense, 10 pruning and
40 mitigation epochs; evaluation of train and test, a checkpoint and the history every
epoch) against ``bench/small_table/plain_loop.py``: pandas one-hot, the same MLP 512-512,
SGD with momentum, 50 epochs, one evaluation of train and test per epoch. Both start a fresh
interpreter, so both pay ``import torch`` and the first optimizer's ``torch._dynamo`` import.
Issue 22 asks the ratio to be at most 3.

    python bench/small_table.py          # writes bench/results/cpu-small_table.{json,md}
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import script_results

HERE = Path(__file__).resolve().parent
REPS = 3


def _table(path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 1000
    df = pd.DataFrame(
        {
            "grp": rng.choice(list("abcdef"), n),
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "x3": rng.normal(size=n),
            "cat": rng.choice(["u", "v", "w"], n),
        }
    )
    df["y"] = np.where(df.x1 + 0.5 * df.x2 + rng.normal(0, 0.5, n) > 0, "yes", "no")
    df.to_csv(path, index=False)


def _seconds(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def main() -> None:
    times: dict[str, list[float]] = {"plain": [], "ceag run": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _table(work / "t.csv")
        run = [sys.executable, "-m", "ceag", "run", "--data", "t.csv", "--label", "y", "--groups", "grp"]
        run += ["--test-fraction", "0.3", "--method", "ceag", "--no-progress", "--no-plots"]
        for rep in range(REPS):
            times["plain"].append(_seconds([sys.executable, str(HERE / "small_table" / "plain_loop.py")], work))
            times["ceag run"].append(_seconds([*run, "--output", f"runs{rep}"], work))
    note = f"OMP_NUM_THREADS=1 in both; {REPS} alternating repetitions, wall time"
    print(script_results.write("small_table", times, unit="s", what="command", baseline="plain", note=note))


if __name__ == "__main__":
    main()
