"""Load: a long CEAG (and NFT) run at G = 10,000 groups and N up to 1M samples, watching memory.

    OMP_NUM_THREADS=1 python bench/load.py                       # N = 100k and 1M (~2.5 min on 1 core)
    OMP_NUM_THREADS=1 python bench/load.py --samples 100000      # one size
    python bench/load.py --worker --samples 50000 --json out.json  # one measurement, in this process

Each size runs in a fresh process (``--worker``), so its peak is its own. The worker:

1. imports torch and ceag, then warms up: one tiny experiment through the same code path (same
   G, methods and model; N = 2,000), so that libraries loaded on first use (pandas, the C++
   extension, the optimizer's lazy imports) and allocator pools count in the baseline, not in
   the measurement. **Baseline** = RSS after the warm-up.
2. generates the synthetic data (``ceag.data.synthetic`` through ``ceag.experiment.load_data``),
   trains the dense model (``dense_model``) and runs every method (``run_one``: the
   :class:`ceag.train.Trainer` with checkpoints, history files and the final report), then
   ``run_experiment`` writes results.json/.md (the runs are finished by then: read back).
3. after every epoch records RSS (``VmRSS``), anonymous RSS, the epoch's own peak (``VmHWM``,
   reset after each epoch through ``/proc/self/clear_refs`` where the kernel allows it) and
   seconds; once, the bytes of the data tensors, the model (weights and masks), the optimizer
   state, the method state (multipliers, dual optimizer, replay buffers G×k, dense constants),
   the history and the checkpoint file.

Verdicts (also what tests/reliability/test_load.py asserts, at N = 50k):

- no growth: within each run, RSS after the last epoch (after ``gc.collect()`` and glibc's
  ``malloc_trim``: live memory, not what the allocator keeps cached) exceeds RSS after its
  second epoch (the first allocates the run's state) by less than ``GROWTH_NOISE_MB`` plus
  the multiplier trajectory the history keeps by design (``HISTORY_BYTES_PER_GROUP_EPOCH``
  × G per epoch);
- bounded peak: peak RSS − baseline ≤ ``PEAK_FACTOR`` × (data + model + optimizer + method
  state) + ``PEAK_SLACK_MB`` (per-step and per-evaluation work buffers, independent of N).

Writes bench/results/load-<N>.json per size and bench/results/load.md (all sizes found).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: Allowed growth of (trimmed) RSS from a run's second epoch to its last: allocator noise, plus
#: what the history keeps by design, one row per epoch holding the G multipliers as Python
#: floats (a list of G pointers to 24-byte floats: ~0.4 MiB per epoch at G = 10,000).
GROWTH_NOISE_MB = 4.0
HISTORY_BYTES_PER_GROUP_EPOCH = 40
PEAK_FACTOR = 2.0
PEAK_SLACK_MB = 96.0

MB = 2**20


# ---------------------------------------------------------------------------------------
# Memory readings (Linux /proc; no psutil)
# ---------------------------------------------------------------------------------------


def status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon and RssFile of this process, in MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


def trim() -> bool:
    """Collect garbage and hand free heap memory back to the OS (glibc ``malloc_trim``), so
    that RSS shows what is live rather than what the allocator keeps for reuse (which moves
    by several MiB from epoch to epoch). False where there is no glibc."""
    import ctypes

    gc.collect()
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) or True)
    except (OSError, AttributeError):
        return False


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------


def tensor_bytes(*objs: Any, depth: int = 8) -> int:
    """Bytes of the distinct tensor storages reachable from ``objs`` through dict values,
    lists, tuples and objects' ``__dict__`` (modules: parameters, buffers and any cached
    tensors such as sparse layouts), at most ``depth`` levels down."""
    import types

    import torch

    seen: set[int] = set()
    ids: set[int] = set()
    total = 0

    def walk(o: Any, level: int) -> None:
        nonlocal total
        if level > depth or id(o) in ids or isinstance(o, (type, types.ModuleType, types.FunctionType, str, bytes)):
            return
        ids.add(id(o))
        if isinstance(o, torch.Tensor):
            storage = o.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, level + 1)
        elif isinstance(o, (list, tuple, set)):
            for v in o:
                walk(v, level + 1)
        elif hasattr(o, "__dict__"):
            for v in vars(o).values():
                walk(v, level + 1)

    for o in objs:
        walk(o, 0)
    return total


def sizes(trainer: Any) -> dict[str, int]:
    """Bytes of what a run holds: data, model, optimizer state, method state, history, checkpoint."""
    data = tensor_bytes(trainer.train_set.tensors, trainer.test_set.tensors if trainer.test_set is not None else ())
    method = trainer.method
    method_state = tensor_bytes(method) if method is not None else 0  # live tensors (state_dict() would copy)
    ckpt = trainer.checkpoint_path
    return {
        "data": data,
        "model": tensor_bytes(trainer.model),
        "optimizer": tensor_bytes(trainer.optimizer.state, trainer.dense_optimizer.state),
        "method": method_state,
        "dense_stats": tensor_bytes(trainer.dense_stats, trainer.dense_test_stats),
        "history_json": len(json.dumps(trainer.history, allow_nan=True)),
        "checkpoint_file": ckpt.stat().st_size if ckpt is not None and ckpt.exists() else 0,
    }


# ---------------------------------------------------------------------------------------
# Worker: one size, in this process
# ---------------------------------------------------------------------------------------


def _config(args: argparse.Namespace, samples: int, test: int, pruning: int, mitigation: int, dense: int, root: str, name: str):
    from ceag.experiment import ExperimentConfig

    return ExperimentConfig(
        dataset="synthetic",
        dataset_options={"num_groups": args.groups, "num_train": samples, "num_test": test},
        hidden=tuple(args.hidden),
        dense_epochs=dense,
        methods=tuple(args.methods),
        sparsities=(args.sparsity,),
        seeds=(0,),
        pruning_epochs=pruning,
        mitigation_epochs=mitigation,
        batch_size=args.batch_size,
        min_count=5,
        name=name,
        output_root=root,
        progress=False,
    )


def worker(args: argparse.Namespace) -> dict[str, Any]:
    start = status()
    import torch

    import ceag.experiment as E

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    imported = status()
    quiet = lambda msg: None  # noqa: E731
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.verbose else quiet
    leak: list[torch.Tensor] = []  # --leak-mb: a deliberate leak, to show the verdicts can fail

    with tempfile.TemporaryDirectory(prefix="ceag-load-", dir=args.tmp) as root:
        # 1. Warm-up: the same code path at a tiny N, then the baseline.
        t0 = time.perf_counter()
        warm = _config(args, 2000, 500, 1, 1, 1, root, "warmup")
        E.run_experiment(warm, log=quiet, plots=args.plots)
        warmup_s = time.perf_counter() - t0
        trim()
        baseline = status()
        can_reset = reset_peak()

        # 2. The measured experiment.
        cfg = _config(args, args.samples, args.test, args.pruning_epochs, args.mitigation_epochs, args.dense_epochs, root, "load")
        t0 = time.perf_counter()
        data = E.load_data(cfg)
        data_s = time.perf_counter() - t0
        after_data = status()
        reset_peak()
        t0 = time.perf_counter()
        dense = E.dense_model(cfg, data, 0, log=log)
        dense_s = time.perf_counter() - t0
        after_dense = status()

        epochs: list[dict[str, Any]] = []
        run_sizes: dict[str, dict[str, int]] = {}
        peaks = [after_data["VmHWM"], after_dense["VmHWM"]]
        clock = {"t": 0.0, "train": 0.0}

        def on_epoch_end(trainer: Any, row: dict[str, Any]) -> None:
            now = time.perf_counter()
            train_s = sum(t["seconds"] for t in trainer.timings.values())
            mem = status()
            trim()
            live = status()
            epochs.append(
                {
                    "method": trainer.config.method,
                    "epoch": row["epoch"],
                    "phase": row["phase"],
                    "seconds": now - clock["t"],
                    "train_seconds": train_s - clock["train"],
                    "steps": row["step"],
                    "rss_mb": mem["VmRSS"],
                    "rss_anon_mb": mem["RssAnon"],
                    "rss_trimmed_mb": live["VmRSS"],
                    "epoch_peak_mb": mem["VmHWM"],
                    "train_accuracy": row.get("train_accuracy"),
                    "train_max_psi": row.get("train_max_psi"),
                    "multiplier_sum": row.get("multiplier_sum"),
                }
            )
            log(f"{trainer.config.method} epoch {row['epoch']}: {epochs[-1]['seconds']:.1f} s, RSS {mem['VmRSS']:.1f} MiB")
            run_sizes[trainer.config.method] = sizes(trainer)
            if args.leak_mb:
                leak.append(torch.ones(int(args.leak_mb * MB) // 4))
            peaks.append(mem["VmHWM"])
            reset_peak()
            clock["t"], clock["train"] = time.perf_counter(), train_s

        runs = []
        for method in cfg.methods:
            clock["t"], clock["train"] = time.perf_counter(), 0.0
            t0 = time.perf_counter()
            r = E.run_one(cfg, data, dense, method, cfg.sparsities[0], 0, log=log, on_epoch_end=on_epoch_end)
            report_peak = status()["VmHWM"]  # the final evaluation of train and test, metrics.json
            peaks.append(report_peak)
            reset_peak()
            runs.append({"method": method, "seconds": time.perf_counter() - t0, "summary": r.summary,
                         "seconds_per_step": r.seconds_per_step, "final_report_peak_mb": report_peak})  # fmt: skip
        del data, dense, r  # run_experiment loads its own copy of the data
        trim()
        t0 = time.perf_counter()
        E.run_experiment(cfg, log=quiet, plots=args.plots)  # every run finished: results.json/.md (and plots)
        report_s = time.perf_counter() - t0
        end = status()
        peaks.append(end["VmHWM"])

    peak = max(peaks) if can_reset else end["VmHWM"]
    held = next(iter(run_sizes.values()))
    state = held["data"] + held["model"] + max(s["optimizer"] for s in run_sizes.values()) + max(
        s["method"] + s["dense_stats"] for s in run_sizes.values()
    )
    result = {
        "groups": args.groups,
        "samples": args.samples,
        "test_samples": args.test,
        "hidden": list(args.hidden),
        "methods": list(args.methods),
        "sparsity": args.sparsity,
        "batch_size": args.batch_size,
        "dense_epochs": args.dense_epochs,
        "pruning_epochs": args.pruning_epochs,
        "mitigation_epochs": args.mitigation_epochs,
        "buffer_size": cfg.buffer_size,
        "leak_mb_per_epoch": args.leak_mb,
        "peak_resettable": can_reset,
        "rss_mb": {
            "start": start["VmRSS"],
            "after_imports": imported["VmRSS"],
            "baseline": baseline["VmRSS"],
            "baseline_anon": baseline["RssAnon"],
            "after_data": after_data["VmRSS"],
            "data_peak": after_data["VmHWM"] if can_reset else None,
            "after_dense": after_dense["VmRSS"],
            "end": end["VmRSS"],
            "experiment_report_peak": end["VmHWM"] if can_reset else None,
            "peak": peak,
        },
        "seconds": {"warmup": warmup_s, "data": data_s, "dense": dense_s, "report": report_s,
                    "runs": {r["method"]: r["seconds"] for r in runs}},  # fmt: skip
        "bytes": run_sizes,
        "state_bytes": state,
        "epochs": epochs,
        "runs": runs,
    }
    result["verdict"] = verdict(result)
    return result


def verdict(r: dict[str, Any]) -> dict[str, Any]:
    """The two checks (see the module docstring) on one worker's result."""
    growth = {}
    for method in r["methods"]:
        es = [e for e in r["epochs"] if e["method"] == method]
        if len(es) >= 3:
            live, raw = [e["rss_trimmed_mb"] for e in es], [e["rss_mb"] for e in es]
            history = 0.0 if method == "nft" else HISTORY_BYTES_PER_GROUP_EPOCH * r["groups"] * (len(es) - 2) / MB
            growth[method] = {
                "from_epoch_2_mb": live[-1] - live[1],
                "limit_mb": GROWTH_NOISE_MB + history,
                "pct_of_rss": 100 * (live[-1] - live[1]) / live[1],
                "raw_from_epoch_2_mb": raw[-1] - raw[1],
                "raw_spread_after_epoch_1_pct": 100 * (max(raw[1:]) - min(raw[1:])) / min(raw[1:]),
            }
    state_mb = r["state_bytes"] / MB
    peak_over = r["rss_mb"]["peak"] - r["rss_mb"]["baseline"]
    limit = PEAK_FACTOR * state_mb + PEAK_SLACK_MB
    return {
        "growth": growth,
        "no_growth": all(g["from_epoch_2_mb"] < g["limit_mb"] for g in growth.values()),
        "state_mb": state_mb,
        "peak_over_baseline_mb": peak_over,
        "peak_over_state": peak_over / state_mb,
        "peak_limit_mb": limit,
        "bounded_peak": peak_over <= limit,
    }


# ---------------------------------------------------------------------------------------
# Driver: one worker process per size, then the report
# ---------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import torch

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    keep = ("Architecture", "CPU(s)", "Model name", "Thread(s) per core", "Core(s) per socket", "L2 cache", "L3 cache")
    lines = [ln for ln in lscpu.splitlines() if ln.split(":")[0].strip() in keep]
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f.readline().split(":")[1].strip()
    except OSError:
        pass
    return {
        "lscpu": "\n".join(lines),
        "memory": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "platform": platform.platform(),
    }


def _mib(b: float) -> str:
    return f"{b / MB:.1f}"


def table(r: dict[str, Any]) -> str:
    """The per-epoch table and the size summary of one worker result, as markdown."""
    b = r["bytes"]
    first = next(iter(b.values()))
    m = r["rss_mb"]
    v = r["verdict"]
    lines = [
        f"### G = {r['groups']:,}, N = {r['samples']:,} (test {r['test_samples']:,})",
        "",
        f"MLP {r['hidden']}, sparsity {r['sparsity']:g}, batch {r['batch_size']}, epochs: {r['dense_epochs']} dense (Adam), "
        f"{r['pruning_epochs']} pruning + {r['mitigation_epochs']} mitigation per method, buffers k = {r['buffer_size']}.",
        "",
        "| held | MiB |",
        "|---|---|",
        f"| data tensors (train + test: x, y, group) | {_mib(first['data'])} |",
        f"| model (weights + masks) | {_mib(first['model'])} |",
        *[f"| optimizer state ({k}) | {_mib(s['optimizer'])} |" for k, s in b.items()],
        *[f"| method state ({k}: multipliers, dual optimizer, buffers G×k, constants) | {_mib(s['method'])} |" for k, s in b.items()],
        f"| dense statistics (train, test) | {_mib(first['dense_stats'])} |",
        *[f"| history as JSON at the end ({k}) | {_mib(s['history_json'])} |" for k, s in b.items()],
        *[f"| checkpoint file ({k}) | {_mib(s['checkpoint_file'])} |" for k, s in b.items()],
        f"| **data + model + optimizer + method state** | **{r['state_bytes'] / MB:.1f}** |",
        "",
        "| RSS | MiB |",
        "|---|---|",
        f"| after `import torch, ceag` | {m['after_imports']:.1f} |",
        f"| baseline (after the warm-up run) | {m['baseline']:.1f} |",
        f"| after generating the data ({r['seconds']['data']:.1f} s) | {m['after_data']:.1f}"
        + (f" (peak {m['data_peak']:.1f})" if m["data_peak"] else "") + " |",
        f"| after the dense model ({r['seconds']['dense']:.1f} s) | {m['after_dense']:.1f} |",
        f"| after `run_experiment` re-reads the finished runs, writes results ({r['seconds']['report']:.1f} s) | "
        f"{m['end']:.1f}" + (f" (peak {m['experiment_report_peak']:.1f})" if m.get("experiment_report_peak") else "") + " |",
        f"| **peak** | **{m['peak']:.1f}** |",
        f"| peak − baseline | {v['peak_over_baseline_mb']:.1f} = {v['peak_over_state']:.2f} × state "
        f"(limit {PEAK_FACTOR:g} × state + {PEAK_SLACK_MB:g} = {v['peak_limit_mb']:.1f}: "
        f"{'met' if v['bounded_peak'] else '**exceeded**'}) |",
        "",
        "| method | epoch | phase | s | train s | RSS after (MiB) | after trim | anon RSS | epoch peak | train acc | max ψ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in r["epochs"]:
        psi = e["train_max_psi"]
        lines.append(
            f"| {e['method']} | {e['epoch']} | {e['phase']} | {e['seconds']:.1f} | {e['train_seconds']:.1f} | "
            f"{e['rss_mb']:.1f} | {e['rss_trimmed_mb']:.1f} | {e['rss_anon_mb']:.1f} | {e['epoch_peak_mb']:.1f} | "
            f"{e['train_accuracy'] * 100:.1f}% | {'n/a' if psi != psi else f'{psi * 100:.1f}%'} |"
        )
    lines.append("")
    for method, g in v["growth"].items():
        lines.append(
            f"- {method}: RSS (after trim) after the last epoch − after epoch 2: {g['from_epoch_2_mb']:+.1f} MiB "
            f"({g['pct_of_rss']:+.2f}%; limit {g['limit_mb']:.1f}: {'met' if g['from_epoch_2_mb'] < g['limit_mb'] else '**exceeded**'}); "
            f"raw RSS {g['raw_from_epoch_2_mb']:+.1f} MiB, spread over epochs 2.. {g['raw_spread_after_epoch_1_pct']:.1f}%"
        )
    steps = ", ".join(f"{x['method']} {x['seconds_per_step'] * 1e3:.2f} ms/step" for x in r["runs"])
    lines.append(f"- mean training step: {steps}")
    return "\n".join(lines)


def report(results: list[dict[str, Any]], info: dict[str, str]) -> str:
    lines = [
        "# Load: G = 10,000 groups, N up to 1M (bench/load.py)",
        "",
        "Machine:",
        "",
        "```",
        info["lscpu"],
        f"Memory: {info['memory']}",
        f"python {info['python']}, torch {info['torch']}, OMP_NUM_THREADS={info['threads']}, {info['platform']}",
        "```",
        "",
        "Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/load.py` (one fresh process per N). RSS is "
        "`VmRSS`; peaks are `VmHWM`, reset after each epoch via `/proc/self/clear_refs`. The baseline "
        "is the RSS after a tiny warm-up experiment through the same code path (interpreter, torch, "
        "ceag, pandas, the extension, allocator pools). \"After trim\": RSS after `gc.collect()` and "
        "glibc's `malloc_trim(0)`, i.e. live memory rather than what the allocator keeps for reuse "
        "(raw RSS moves by 1-3% from epoch to epoch either way). State = data + model + optimizer "
        "state + method state (multipliers, dual optimizer, replay buffers G×k, dense constants).",
        "",
        f"Checks: RSS after trim, last epoch − second epoch of each run < {GROWTH_NOISE_MB:g} MiB + "
        f"{HISTORY_BYTES_PER_GROUP_EPOCH} B × G per epoch (the history keeps each epoch's G multipliers as "
        f"Python floats, by design: ~0.4 MiB per epoch at G = 10,000); peak − baseline ≤ {PEAK_FACTOR:g} × "
        f"state + {PEAK_SLACK_MB:g} MiB.",
        "",
        "| N | data MiB | state MiB | baseline | peak | peak − baseline | × state "
        "| RSS growth epoch 2 → last, after trim (per method) | s/epoch (train loop), per method |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        v, m = r["verdict"], r["rss_mb"]
        growth = ", ".join(f"{k} {g['from_epoch_2_mb']:+.1f}" for k, g in v["growth"].items())
        per = []
        for method in r["methods"]:
            es = [e for e in r["epochs"] if e["method"] == method][1:]
            if es:
                wall, train = (sum(e[k] for e in es) / len(es) for k in ("seconds", "train_seconds"))
                per.append(f"{method} {wall:.1f} ({train:.1f})")
        data_mb = next(iter(r["bytes"].values()))["data"] / MB
        lines.append(
            f"| {r['samples']:,} | {data_mb:.1f} | {v['state_mb']:.1f} | {m['baseline']:.0f} | {m['peak']:.0f} | "
            f"{v['peak_over_baseline_mb']:.0f} | {v['peak_over_state']:.2f} | {growth} | {', '.join(per)} |"
        )
    lines += [
        "",
        "s/epoch: mean over a run's epochs after its first, including the evaluation of train and test, "
        "the history files and the checkpoint; in parentheses the training loop alone.",
        "",
    ]
    for r in results:
        lines += [table(r), ""]
    return "\n".join(lines)


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
    p.add_argument("--worker", action="store_true", help="measure one size in this process")
    p.add_argument("--json", help="worker: write the result here")
    p.add_argument("--out", default=str(RESULTS), help="driver: results folder (default bench/results)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.worker:
        if len(args.samples) != 1:
            raise SystemExit("--worker measures one size: give one --samples")
        args.samples = args.samples[0]
        result = worker(args)
        text = json.dumps(result, indent=1, allow_nan=True)
        if args.json:
            Path(args.json).write_text(text)
        else:
            print(text)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    passthrough = _drop_values(argv if argv is not None else sys.argv[1:], ("--samples", "--out"))
    for n in args.samples:
        path = out / f"load-{n}.json"
        t0 = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--samples", str(n), "--json", str(path), *passthrough]
        rc = subprocess.call(cmd)
        if rc != 0:
            print(f"N = {n}: worker failed (exit {rc})", file=sys.stderr)
            return rc
        result = json.loads(path.read_text())
        result["machine"] = info
        path.write_text(json.dumps(result, indent=1, allow_nan=True))
        print(table(result))
        print(f"(N = {n:,}: {time.perf_counter() - t0:.0f} s)\n", flush=True)
    results = [json.loads(p.read_text()) for p in out.glob("load-*.json")]
    results.sort(key=lambda r: r["samples"])
    (out / "load.md").write_text(report(results, info) + "\n")
    print(f"wrote {out / 'load.md'}")
    ok = all(r["verdict"]["no_growth"] and r["verdict"]["bounded_peak"] for r in results)
    return 0 if ok else 1


def _drop_values(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` without ``flags`` and their values (``--flag v`` or ``--flag=v``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        if any(a.startswith(f + "=") for f in flags):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
