"""bench/load.py's measurement, in this process: memory readings, sizes, and ``measure``."""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from typing import Any

from load_report import MB, Epoch, LoadConfig, LoadReport, state_bytes, verdict

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
# The measurement
# ---------------------------------------------------------------------------------------


def _experiment_config(E: Any, c: LoadConfig, samples: int, test: int, epochs: tuple[int, int, int], root: str, name: str) -> Any:
    dense, pruning, mitigation = epochs
    return E.ExperimentConfig(
        dataset="synthetic",
        dataset_options={"num_groups": c.groups, "num_train": samples, "num_test": test},
        hidden=c.hidden,
        dense_epochs=dense,
        methods=c.methods,
        sparsities=(c.sparsity,),
        seeds=(0,),
        pruning_epochs=pruning,
        mitigation_epochs=mitigation,
        batch_size=c.batch_size,
        min_count=5,
        name=name,
        output_root=root,
        progress=False,
    )


def measure(config: LoadConfig) -> LoadReport:
    """Measure ``config`` in this process (bench/load.py's docstring says how). Its peak and
    baseline are this process's: use ``load.run_load`` for a fresh process."""
    start = status()
    import torch

    import ceag.app.experiment as E

    torch.set_num_threads(config.num_threads)
    imported = status()
    quiet = lambda msg: None  # noqa: E731
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if config.verbose else quiet
    leak: list[torch.Tensor] = []  # config.leak_mb: a deliberate leak, to show the verdicts can fail

    with tempfile.TemporaryDirectory(prefix="ceag-load-", dir=config.tmp) as root:
        # 1. Warm-up: the same code path at a tiny N, then the baseline.
        t0 = time.perf_counter()
        warm = _experiment_config(E, config, 2000, 500, (1, 1, 1), root, "warmup")
        E.run_experiment(warm, log=quiet, plots=config.plots)
        warmup_s = time.perf_counter() - t0
        trim()
        baseline = status()
        can_reset = reset_peak()

        # 2. The measured experiment.
        epochs_per_phase = (config.dense_epochs, config.pruning_epochs, config.mitigation_epochs)
        cfg = _experiment_config(E, config, config.samples, config.test, epochs_per_phase, root, "load")
        t0 = time.perf_counter()
        data = E.load_data(cfg)
        data_s = time.perf_counter() - t0
        after_data = status()
        reset_peak()
        t0 = time.perf_counter()
        dense = E.dense_model(cfg, data, 0, log=log)
        dense_s = time.perf_counter() - t0
        after_dense = status()

        epochs: list[Epoch] = []
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
                Epoch(
                    method=trainer.config.method,
                    epoch=row["epoch"],
                    phase=row["phase"],
                    seconds=now - clock["t"],
                    train_seconds=train_s - clock["train"],
                    steps=row["step"],
                    rss_mb=mem["VmRSS"],
                    rss_anon_mb=mem["RssAnon"],
                    rss_trimmed_mb=live["VmRSS"],
                    epoch_peak_mb=mem["VmHWM"],
                    train_accuracy=row.get("train_accuracy"),
                    train_max_psi=row.get("train_max_psi"),
                    multiplier_sum=row.get("multiplier_sum"),
                )
            )
            log(f"{trainer.config.method} epoch {row['epoch']}: {epochs[-1].seconds:.1f} s, RSS {mem['VmRSS']:.1f} MiB")
            run_sizes[trainer.config.method] = sizes(trainer)
            if config.leak_mb:
                leak.append(torch.ones(int(config.leak_mb * MB) // 4))
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
            runs.append(
                {
                    "method": method,
                    "seconds": time.perf_counter() - t0,
                    "summary": r.summary,
                    "seconds_per_step": r.seconds_per_step,
                    "final_report_peak_mb": report_peak,
                }
            )
        del data, dense, r  # run_experiment loads its own copy of the data
        trim()
        t0 = time.perf_counter()
        E.run_experiment(cfg, log=quiet, plots=config.plots)  # every run finished: results.json/.md (and plots)
        report_s = time.perf_counter() - t0
        end = status()
        peaks.append(end["VmHWM"])

    peak = max(peaks) if can_reset else end["VmHWM"]
    rss_mb = {
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
    }
    state = state_bytes(run_sizes)
    return LoadReport(
        config=config,
        buffer_size=cfg.buffer_size,
        peak_resettable=can_reset,
        rss_mb=rss_mb,
        seconds={
            "warmup": warmup_s,
            "data": data_s,
            "dense": dense_s,
            "report": report_s,
            "runs": {r["method"]: r["seconds"] for r in runs},
        },
        bytes=run_sizes,
        state_bytes=state,
        epochs=tuple(epochs),
        runs=tuple(runs),
        verdict=verdict(config, epochs, rss_mb, state),
    )
