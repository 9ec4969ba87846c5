"""Results of the benchmark scripts that time whole runs (not pytest-benchmark): one JSON and
one markdown table in bench/results/, each row's median and its ratio to the baseline row."""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())


def write(name: str, times: dict[str, list[float]], *, unit: str, what: str, baseline: str, note: str) -> str:
    """Write ``bench/results/cpu-<name>.json`` and ``.md`` for ``times`` (row -> repetitions,
    in ``unit``); returns the table. ``what`` heads the first column, ``note`` follows the machine."""
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = cpu_model()
    RESULTS.mkdir(exist_ok=True)
    payload = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "unit": unit, "times": times}
    (RESULTS / f"cpu-{name}.json").write_text(json.dumps(payload, indent=1))
    lines = [
        f"# cpu-{name}",
        "",
        f"Machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}; {note}",
        "",
        f"| {what} | median ({unit}) | min ({unit}) | vs {baseline} |",
        "|---|---|---|---|",
        *(f"| {k} | {med[k]:.2f} | {min(v):.2f} | {med[k] / med[baseline]:.2f}x |" for k, v in times.items()),
    ]
    table = "\n".join(lines) + "\n"
    (RESULTS / f"cpu-{name}.md").write_text(table)
    return table
