"""Run the CPU (or, on a GPU machine, GPU) benchmarks and record them in bench/results/.

    python bench/run.py                  # every bench/bench_*.py that applies here
    python bench/run.py masked_linear    # only bench/bench_masked_linear.py

Each module writes bench/results/<prefix>-<name>.json (pytest-benchmark) and the markdown
table beside it (bench/report.py); <prefix> is "cpu" or "gpu".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main(names: list[str]) -> int:
    prefix = "gpu" if torch.cuda.is_available() else "cpu"
    modules = sorted(HERE.glob("bench_*.py"))
    if names:
        modules = [m for m in modules if m.stem.removeprefix("bench_") in names]
    if prefix == "cpu":
        modules = [m for m in modules if m.stem != "bench_gpu"]
    RESULTS.mkdir(exist_ok=True)
    failed = 0
    for module in modules:
        out = RESULTS / f"{prefix}-{module.stem.removeprefix('bench_')}.json"
        rc = subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                str(module),
                "-q",
                "-p",
                "no:cacheprovider",
                "--benchmark-only",
                f"--benchmark-json={out}",
            ],
            cwd=HERE.parent,
        )
        failed += rc != 0
        if out.exists():
            subprocess.call([sys.executable, str(HERE / "report.py"), str(out)])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
