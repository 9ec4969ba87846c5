"""Start-up: ``ceag --help`` and ``import ceag`` against ``python -c "import torch"``.

Each round is a fresh interpreter (``subprocess.run``), so the operating system's file cache
is warm after the warm-up round and each round measures imports, not disk reads. The
baseline (``impl == "eager"`` in the report's convention) is importing torch alone; issue 22
asks ``ceag --help`` for at most 1.2x its time, so the report's "speedup vs eager" should stay
above 0.83.

    pytest bench/bench_startup.py --benchmark-only --benchmark-json=/tmp/s.json
    python bench/report.py /tmp/s.json
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMMANDS = {
    "eager": [sys.executable, "-c", "import torch"],  # the baseline: torch alone
    "import-ceag": [sys.executable, "-c", "import ceag"],
    "ceag-help": [sys.executable, "-m", "ceag", "--help"],
}
ROUNDS, WARMUP = 5, 1


@pytest.mark.parametrize("impl", list(COMMANDS))
def test_startup(benchmark, impl: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start():
        subprocess.run(COMMANDS[impl], check=True, stdout=subprocess.DEVNULL, env=env)

    benchmark.group = "startup"
    benchmark.pedantic(start, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
