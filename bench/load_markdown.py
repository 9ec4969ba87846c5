"""bench/load.py's write-up: the machine, one table per measurement, and bench/results/load.md."""

from __future__ import annotations

import os
import platform
import subprocess

from load_report import (
    GROWTH_NOISE_MB,
    HISTORY_BYTES_PER_GROUP_EPOCH,
    MB,
    PEAK_FACTOR,
    PEAK_SLACK_MB,
    LoadReport,
)


def machine() -> dict[str, str]:
    import torch

    try:
        lscpu = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
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


def table(r: LoadReport) -> str:
    """The per-epoch table and the size summary of one measurement, as markdown."""
    c, b, m, v = r.config, r.bytes, r.rss_mb, r.verdict
    first = next(iter(b.values()))
    lines = [
        f"### G = {c.groups:,}, N = {c.samples:,} (test {c.test:,})",
        "",
        f"MLP {list(c.hidden)}, sparsity {c.sparsity:g}, batch {c.batch_size}, epochs: {c.dense_epochs} dense (Adam), "
        f"{c.pruning_epochs} pruning + {c.mitigation_epochs} mitigation per method, buffers k = {r.buffer_size}.",
        "",
        "| held | MiB |",
        "|---|---|",
        f"| data tensors (train + test: x, y, group) | {_mib(first['data'])} |",
        f"| model (weights + masks) | {_mib(first['model'])} |",
        *[f"| optimizer state ({k}) | {_mib(s['optimizer'])} |" for k, s in b.items()],
        *[
            f"| method state ({k}: multipliers, dual optimizer, buffers G×k, constants) | {_mib(s['method'])} |"
            for k, s in b.items()
        ],
        f"| dense statistics (train, test) | {_mib(first['dense_stats'])} |",
        *[f"| history as JSON at the end ({k}) | {_mib(s['history_json'])} |" for k, s in b.items()],
        *[f"| checkpoint file ({k}) | {_mib(s['checkpoint_file'])} |" for k, s in b.items()],
        f"| **data + model + optimizer + method state** | **{r.state_bytes / MB:.1f}** |",
        "",
        "| RSS | MiB |",
        "|---|---|",
        f"| after `import torch, ceag` | {m['after_imports']:.1f} |",
        f"| baseline (after the warm-up run) | {m['baseline']:.1f} |",
        f"| after generating the data ({r.seconds['data']:.1f} s) | {m['after_data']:.1f}"
        + (f" (peak {m['data_peak']:.1f})" if m["data_peak"] else "")
        + " |",
        f"| after the dense model ({r.seconds['dense']:.1f} s) | {m['after_dense']:.1f} |",
        f"| after `run_experiment` re-reads the finished runs, writes results ({r.seconds['report']:.1f} s) | "
        f"{m['end']:.1f}" + (f" (peak {m['experiment_report_peak']:.1f})" if m.get("experiment_report_peak") else "") + " |",
        f"| **peak** | **{m['peak']:.1f}** |",
        f"| peak − baseline | {v.peak_over_baseline_mb:.1f} = {v.peak_over_state:.2f} × state "
        f"(limit {PEAK_FACTOR:g} × state + {PEAK_SLACK_MB:g} = {v.peak_limit_mb:.1f}: "
        f"{'met' if v.bounded_peak else '**exceeded**'}) |",
        "",
        "| method | epoch | phase | s | train s | RSS after (MiB) | after trim | anon RSS | epoch peak | train acc | max ψ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in r.epochs:
        psi = e.train_max_psi
        lines.append(
            f"| {e.method} | {e.epoch} | {e.phase} | {e.seconds:.1f} | {e.train_seconds:.1f} | "
            f"{e.rss_mb:.1f} | {e.rss_trimmed_mb:.1f} | {e.rss_anon_mb:.1f} | {e.epoch_peak_mb:.1f} | "
            f"{e.train_accuracy * 100:.1f}% | {'n/a' if psi != psi else f'{psi * 100:.1f}%'} |"
        )
    lines.append("")
    for method, g in v.growth.items():
        lines.append(
            f"- {method}: RSS (after trim) after the last epoch − after epoch 2: {g.from_epoch_2_mb:+.1f} MiB "
            f"({g.pct_of_rss:+.2f}%; limit {g.limit_mb:.1f}: {'met' if g.met else '**exceeded**'}); "
            f"raw RSS {g.raw_from_epoch_2_mb:+.1f} MiB, spread over epochs 2.. {g.raw_spread_after_epoch_1_pct:.1f}%"
        )
    steps = ", ".join(f"{x['method']} {x['seconds_per_step'] * 1e3:.2f} ms/step" for x in r.runs)
    lines.append(f"- mean training step: {steps}")
    return "\n".join(lines)


def report(results: list[LoadReport], info: dict[str, str]) -> str:
    """bench/results/load.md: the machine, the summary row of each measurement, their tables."""
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
        'ceag, pandas, the extension, allocator pools). "After trim": RSS after `gc.collect()` and '
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
        v, m = r.verdict, r.rss_mb
        growth = ", ".join(f"{k} {g.from_epoch_2_mb:+.1f}" for k, g in v.growth.items())
        per = []
        for method in r.config.methods:
            es = r.epochs_of(method)[1:]
            if es:
                wall, train = (sum(getattr(e, k) for e in es) / len(es) for k in ("seconds", "train_seconds"))
                per.append(f"{method} {wall:.1f} ({train:.1f})")
        data_mb = next(iter(r.bytes.values()))["data"] / MB
        lines.append(
            f"| {r.config.samples:,} | {data_mb:.1f} | {v.state_mb:.1f} | {m['baseline']:.0f} | {m['peak']:.0f} | "
            f"{v.peak_over_baseline_mb:.0f} | {v.peak_over_state:.2f} | {growth} | {', '.join(per)} |"
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
