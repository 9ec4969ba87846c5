"""What bench/load.py measures and how it judges it: LoadConfig in, LoadReport out.

The JSON form of a report (``LoadReport.to_dict``) is the layout of bench/results/load-<N>.json.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: Allowed growth of (trimmed) RSS from a run's second epoch to its last: allocator noise, plus
#: what the history keeps by design, one row per epoch holding the G multipliers as Python
#: floats (a list of G pointers to 24-byte floats: ~0.4 MiB per epoch at G = 10,000).
GROWTH_NOISE_MB = 4.0
HISTORY_BYTES_PER_GROUP_EPOCH = 40
PEAK_FACTOR = 2.0
PEAK_SLACK_MB = 96.0

MB = 2**20


@dataclass(frozen=True)
class LoadConfig:
    """One measurement: a synthetic experiment at ``groups`` groups and ``samples`` training
    samples (MLP ``hidden``, each of ``methods`` at ``sparsity``), the epochs of each phase,
    ``leak_mb`` MiB kept after every epoch (a deliberate leak, to show the checks can fail),
    the runs' files under ``tmp`` (None: the system temp folder), ``threads`` torch threads
    (None: $OMP_NUM_THREADS, else 1)."""

    samples: int
    groups: int = 10_000
    test: int = 50_000
    hidden: tuple[int, ...] = (128, 128)
    methods: tuple[str, ...] = ("nft", "ceag")
    sparsity: float = 0.9
    batch_size: int = 256
    dense_epochs: int = 1
    pruning_epochs: int = 2
    mitigation_epochs: int = 8
    plots: bool = False
    leak_mb: float = 0.0
    tmp: str | None = None
    threads: int | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "methods", tuple(self.methods))
        for name in ("samples", "groups", "test", "batch_size", "dense_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoadConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.pruning_epochs + self.mitigation_epochs < 3:
            raise ValueError("the growth check needs at least 3 epochs per run (pruning_epochs + mitigation_epochs)")
        if not self.methods or not self.hidden:
            raise ValueError("LoadConfig needs at least one method and one hidden layer")
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"LoadConfig.sparsity must be in (0, 1), got {self.sparsity}")
        if self.leak_mb < 0 or (self.threads is not None and self.threads < 1):
            raise ValueError("LoadConfig.leak_mb must be >= 0 and threads >= 1")

    @property
    def num_threads(self) -> int:
        return self.threads if self.threads is not None else max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))

    def argv(self) -> list[str]:
        """The same configuration as ``bench/load.py`` command-line options."""
        out = [
            "--samples",
            str(self.samples),
            "--groups",
            str(self.groups),
            "--test",
            str(self.test),
            "--hidden",
            ",".join(map(str, self.hidden)),
            "--methods",
            ",".join(self.methods),
            "--sparsity",
            repr(self.sparsity),
            "--batch-size",
            str(self.batch_size),
            "--dense-epochs",
            str(self.dense_epochs),
            "--pruning-epochs",
            str(self.pruning_epochs),
            "--mitigation-epochs",
            str(self.mitigation_epochs),
            "--leak-mb",
            repr(self.leak_mb),
        ]
        out += ["--plots"] * self.plots + ["-v"] * self.verbose
        out += ["--tmp", self.tmp] if self.tmp is not None else []
        out += ["--threads", str(self.threads)] if self.threads is not None else []
        return out


@dataclass(frozen=True)
class Epoch:
    """Readings after one epoch of one run (MiB, seconds)."""

    method: str
    epoch: int
    phase: str
    seconds: float
    train_seconds: float
    steps: int
    rss_mb: float
    rss_anon_mb: float
    rss_trimmed_mb: float  # after gc.collect() and malloc_trim(0): live memory
    epoch_peak_mb: float
    train_accuracy: float | None
    train_max_psi: float | None
    multiplier_sum: float | None


@dataclass(frozen=True)
class Growth:
    """One run's (trimmed) RSS growth from its second epoch to its last, against its limit."""

    from_epoch_2_mb: float
    limit_mb: float
    pct_of_rss: float
    raw_from_epoch_2_mb: float
    raw_spread_after_epoch_1_pct: float

    @property
    def met(self) -> bool:
        return self.from_epoch_2_mb < self.limit_mb


@dataclass(frozen=True)
class Verdict:
    """The two checks: no growth per epoch (every run), and a peak bounded by the state held."""

    growth: dict[str, Growth]
    no_growth: bool
    state_mb: float
    peak_over_baseline_mb: float
    peak_over_state: float
    peak_limit_mb: float
    bounded_peak: bool

    @property
    def ok(self) -> bool:
        return self.no_growth and self.bounded_peak


@dataclass(frozen=True)
class LoadReport:
    """One measurement's readings and verdict.

    ``rss_mb``: start, after_imports, baseline (after the warm-up), baseline_anon, after_data,
    data_peak, after_dense, end, experiment_report_peak, peak (None where the peak could not be
    reset). ``seconds``: warmup, data, dense, report, runs (per method). ``bytes``: per method,
    data, model, optimizer, method, dense_stats, history_json, checkpoint_file. ``state_bytes``:
    data + model + optimizer + method state. ``runs``: per method, its seconds, summary, mean
    seconds per step and the final report's peak."""

    config: LoadConfig
    buffer_size: int
    peak_resettable: bool
    rss_mb: dict[str, float | None]
    seconds: dict[str, Any]
    bytes: dict[str, dict[str, int]]
    state_bytes: int
    epochs: tuple[Epoch, ...]
    runs: tuple[dict[str, Any], ...]
    verdict: Verdict
    machine: dict[str, str] | None = field(default=None, compare=False)

    def epochs_of(self, method: str) -> list[Epoch]:
        return [e for e in self.epochs if e.method == method]

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        out = {
            "groups": c.groups,
            "samples": c.samples,
            "test_samples": c.test,
            "hidden": list(c.hidden),
            "methods": list(c.methods),
            "sparsity": c.sparsity,
            "batch_size": c.batch_size,
            "dense_epochs": c.dense_epochs,
            "pruning_epochs": c.pruning_epochs,
            "mitigation_epochs": c.mitigation_epochs,
            "buffer_size": self.buffer_size,
            "leak_mb_per_epoch": c.leak_mb,
            "peak_resettable": self.peak_resettable,
            "rss_mb": dict(self.rss_mb),
            "seconds": self.seconds,
            "bytes": self.bytes,
            "state_bytes": self.state_bytes,
            "epochs": [asdict(e) for e in self.epochs],
            "runs": list(self.runs),
            "verdict": asdict(self.verdict),
        }
        if self.machine is not None:
            out["machine"] = self.machine
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadReport:
        config = LoadConfig(
            samples=d["samples"],
            groups=d["groups"],
            test=d["test_samples"],
            hidden=tuple(d["hidden"]),
            methods=tuple(d["methods"]),
            sparsity=d["sparsity"],
            batch_size=d["batch_size"],
            dense_epochs=d["dense_epochs"],
            pruning_epochs=d["pruning_epochs"],
            mitigation_epochs=d["mitigation_epochs"],
            leak_mb=d.get("leak_mb_per_epoch", 0.0),
        )
        v = d["verdict"]
        verdict = Verdict(**{**v, "growth": {k: Growth(**g) for k, g in v["growth"].items()}})
        names = {f.name for f in fields(Epoch)}
        return cls(
            config=config,
            buffer_size=d["buffer_size"],
            peak_resettable=d["peak_resettable"],
            rss_mb=d["rss_mb"],
            seconds=d["seconds"],
            bytes=d["bytes"],
            state_bytes=d["state_bytes"],
            epochs=tuple(Epoch(**{k: e[k] for k in names}) for e in d["epochs"]),
            runs=tuple(d["runs"]),
            verdict=verdict,
            machine=d.get("machine"),
        )


def state_bytes(sizes: dict[str, dict[str, int]]) -> int:
    """Data + model + optimizer state + method state (with the dense constants): the data and
    model of the first run (every run holds the same), the largest of the others."""
    first = next(iter(sizes.values()))
    return (
        first["data"]
        + first["model"]
        + max(s["optimizer"] for s in sizes.values())
        + max(s["method"] + s["dense_stats"] for s in sizes.values())
    )


def verdict(config: LoadConfig, epochs: tuple[Epoch, ...] | list[Epoch], rss_mb: dict[str, Any], state: int) -> Verdict:
    """The two checks (bench/load.py's docstring) on one measurement.

    growth_m = RSS_trim(last epoch) − RSS_trim(epoch 2) < GROWTH_NOISE_MB + h_m, with
    h_m = HISTORY_BYTES_PER_GROUP_EPOCH · G · (epochs − 2) for methods with multipliers (0 for NFT);
    peak − baseline ≤ PEAK_FACTOR · state + PEAK_SLACK_MB."""
    growth = {}
    for method in config.methods:
        es = [e for e in epochs if e.method == method]
        if len(es) >= 3:
            live, raw = [e.rss_trimmed_mb for e in es], [e.rss_mb for e in es]
            history = 0.0 if method == "nft" else HISTORY_BYTES_PER_GROUP_EPOCH * config.groups * (len(es) - 2) / MB
            growth[method] = Growth(
                from_epoch_2_mb=live[-1] - live[1],
                limit_mb=GROWTH_NOISE_MB + history,
                pct_of_rss=100 * (live[-1] - live[1]) / live[1],
                raw_from_epoch_2_mb=raw[-1] - raw[1],
                raw_spread_after_epoch_1_pct=100 * (max(raw[1:]) - min(raw[1:])) / min(raw[1:]),
            )
    state_mb = state / MB
    peak_over = rss_mb["peak"] - rss_mb["baseline"]
    limit = PEAK_FACTOR * state_mb + PEAK_SLACK_MB
    return Verdict(
        growth=growth,
        no_growth=all(g.met for g in growth.values()),
        state_mb=state_mb,
        peak_over_baseline_mb=peak_over,
        peak_over_state=peak_over / state_mb,
        peak_limit_mb=limit,
        bounded_peak=peak_over <= limit,
    )
