"""Load: a long CEAG (and NFT) run at G = 10,000 groups and N up to 1M samples, watching memory.

    OMP_NUM_THREADS=1 python bench/load.py                       # N = 100k and 1M (~2.5 min on 1 core)
    OMP_NUM_THREADS=1 python bench/load.py --samples 100000      # one size
    python bench/load.py --worker --samples 50000 --json out.json  # one measurement, in this process

From Python (bench/ on ``sys.path``, as tests/bench/conftest.py does)::

    from load import LoadConfig, run_load
    report = run_load(LoadConfig(samples=50_000, test=5_000), timeout_s=240)
    assert report.verdict.ok, report.verdict

Each size runs in a fresh process (``run_load``; ``--worker`` on the command line), so its
peak is its own. The measurement (``load_measure.measure``):

1. imports torch and ceag, then warms up: one tiny experiment through the same code path (same
   G, methods and model; N = 2,000), so that libraries loaded on first use (pandas, the C++
   extension, the optimizer's lazy imports) and allocator pools count in the baseline, not in
   the measurement. **Baseline** = RSS after the warm-up.
2. generates the synthetic data (``ceag.app.data.synthetic`` through
   ``ceag.app.experiment.load_data``), trains the dense model (``dense_model``) and runs every
   method (``run_one``: the :class:`ceag.train.Trainer` with checkpoints, history files and the
   final report), then ``run_experiment`` writes results.json/.md (the runs are finished by
   then: read back).
3. after every epoch records RSS (``VmRSS``), anonymous RSS, the epoch's own peak (``VmHWM``,
   reset after each epoch through ``/proc/self/clear_refs`` where the kernel allows it) and
   seconds; once, the bytes of the data tensors, the model (weights and masks), the optimizer
   state, the method state (multipliers, dual optimizer, replay buffers G×k, dense constants),
   the history and the checkpoint file.

Verdicts (``LoadReport.verdict``; what tests/bench/test_load.py asserts, at N = 50k):

- no growth: within each run, RSS after the last epoch (after ``gc.collect()`` and glibc's
  ``malloc_trim``: live memory, not what the allocator keeps cached) exceeds RSS after its
  second epoch (the first allocates the run's state) by less than ``GROWTH_NOISE_MB`` plus
  the multiplier trajectory the history keeps by design (``HISTORY_BYTES_PER_GROUP_EPOCH``
  × G per epoch);
- bounded peak: peak RSS − baseline ≤ ``PEAK_FACTOR`` × (data + model + optimizer + method
  state) + ``PEAK_SLACK_MB`` (per-step and per-evaluation work buffers, independent of N).

Writes bench/results/load-<N>.json per size and bench/results/load.md (all sizes found).
Files: load_report.py (LoadConfig, LoadReport, the verdict), load_measure.py (the measurement),
load_markdown.py (the write-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load_markdown import machine, report, table
from load_measure import measure
from load_report import (
    GROWTH_NOISE_MB,
    HISTORY_BYTES_PER_GROUP_EPOCH,
    PEAK_FACTOR,
    PEAK_SLACK_MB,
    Epoch,
    Growth,
    LoadConfig,
    LoadReport,
    Verdict,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

__all__ = [
    "GROWTH_NOISE_MB",
    "HISTORY_BYTES_PER_GROUP_EPOCH",
    "PEAK_FACTOR",
    "PEAK_SLACK_MB",
    "Epoch",
    "Growth",
    "LoadConfig",
    "LoadReport",
    "Verdict",
    "measure",
    "run_load",
]


def run_load(config: LoadConfig, *, timeout_s: float | None = None) -> LoadReport:
    """Measure ``config`` in a fresh Python process (``bench/load.py --worker``), so that the
    baseline and the peak are that run's alone, not whatever the caller holds or held.

    Raises ``subprocess.TimeoutExpired`` after ``timeout_s`` seconds, ``RuntimeError`` (with
    the end of the worker's stderr, unless ``config.verbose`` let it through) if it fails."""
    env = dict(os.environ)
    if config.threads is not None:
        env["OMP_NUM_THREADS"] = str(config.threads)
    with tempfile.TemporaryDirectory(prefix="ceag-load-report-") as tmp:
        out = Path(tmp) / "load.json"
        cmd = [sys.executable, str(HERE / "load.py"), "--worker", *config.argv(), "--json", str(out)]
        stderr = None if config.verbose else subprocess.PIPE
        proc = subprocess.run(cmd, check=False, env=env, stderr=stderr, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            tail = (proc.stderr or "(its stderr is above)")[-3000:]
            raise RuntimeError(f"load worker for N = {config.samples:,} failed (exit {proc.returncode}):\n{tail}")
        return LoadReport.from_dict(json.loads(out.read_text()))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=ints, default=[100_000, 1_000_000], help="N, comma-separated (default 100000,1000000)")
    p.add_argument("--groups", type=int, default=10_000)
    p.add_argument("--test", type=int, default=50_000, help="test samples (default 50000)")
    p.add_argument("--hidden", type=ints, default=[128, 128])
    p.add_argument("--methods", type=lambda s: s.split(","), default=["nft", "ceag"])
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dense-epochs", type=int, default=1)
    p.add_argument("--pruning-epochs", type=int, default=2)
    p.add_argument("--mitigation-epochs", type=int, default=8)
    p.add_argument("--plots", action="store_true", help="also write the plots (per-group bars of G groups)")
    p.add_argument("--leak-mb", type=float, default=0.0, help="keep this many MiB more after every epoch (a fake leak)")
    p.add_argument("--tmp", default=None, help="folder for the runs' files (default: the system temp folder)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: $OMP_NUM_THREADS, else 1)")
    p.add_argument("--worker", action="store_true", help="measure one size in this process")
    p.add_argument("--json", help="worker: write the result here")
    p.add_argument("--out", default=str(RESULTS), help="driver: results folder (default bench/results)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _config(args: argparse.Namespace, samples: int) -> LoadConfig:
    return LoadConfig(
        samples=samples,
        groups=args.groups,
        test=args.test,
        hidden=tuple(args.hidden),
        methods=tuple(args.methods),
        sparsity=args.sparsity,
        batch_size=args.batch_size,
        dense_epochs=args.dense_epochs,
        pruning_epochs=args.pruning_epochs,
        mitigation_epochs=args.mitigation_epochs,
        plots=args.plots,
        leak_mb=args.leak_mb,
        tmp=args.tmp,
        threads=args.threads,
        verbose=args.verbose,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        configs = [_config(args, n) for n in args.samples]
    except ValueError as e:
        raise SystemExit(f"bench/load.py: {e}") from None
    if args.worker:
        if len(configs) != 1:
            raise SystemExit("--worker measures one size: give one --samples")
        text = json.dumps(measure(configs[0]).to_dict(), indent=1, allow_nan=True)
        if args.json:
            Path(args.json).write_text(text)
        else:
            print(text)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    for config in configs:
        n = config.samples
        t0 = time.perf_counter()
        try:
            result = run_load(config)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        path = out / f"load-{n}.json"
        path.write_text(json.dumps({**result.to_dict(), "machine": info}, indent=1, allow_nan=True))
        print(table(result))
        print(f"(N = {n:,}: {time.perf_counter() - t0:.0f} s)\n", flush=True)
    results = [LoadReport.from_dict(json.loads(p.read_text())) for p in out.glob("load-*.json")]
    results.sort(key=lambda r: r.config.samples)
    (out / "load.md").write_text(report(results, info) + "\n")
    print(f"wrote {out / 'load.md'}")
    return 0 if all(r.verdict.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
