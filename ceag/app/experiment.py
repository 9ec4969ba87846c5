"""Experiments: dense model → pruning → fine-tuning per method, repeated over seeds, reported.

This is what the ``ceag`` command runs (``ceag run / compare / sweep``), usable from Python::

    from ceag.app.experiment import ExperimentConfig, run_experiment
    result = run_experiment(ExperimentConfig(dataset="adult", methods=("nft", "ceag"), seeds=(0, 1, 2)))
    print(result.table())

For every seed one dense model is trained (or loaded from a cache keyed by everything it
depends on), and every (method, sparsity) starts from that same dense model with the same
data order, GMP schedule and optimiser (:class:`ceag.train.Trainer`), so methods differ
only in the fine-tuning objective.

Files, under ``output_root/name/``::

    config.json                       the resolved ExperimentConfig
    <method>-s<sparsity>-seed<k>/     one Trainer run: history.json/.csv, last.ckpt, metrics.json
    results.json, results.md          the table (mean ± std over seeds) and per-run summaries
    plots/*.png                       per-group ψ bars, ψ over training, multipliers, trade-off
    output_root/.dense-cache/*.ckpt   dense models, shared between experiments

A finished run (its ``metrics.json`` exists) is not run again, and an interrupted one
continues from its last checkpoint, so re-running the same command resumes the experiment
(every file is written atomically, so a kill at any point leaves a resumable folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ceag.app import data as datasets
from ceag.app.data.images import image_digest
from ceag.app.data.table import table_digest
from ceag._io import LOCK_NAME, atomic_write, check_output_dir, lock, remove_temp_files
from ceag.errors import UsageError
from ceag.methods import DUAL_OPTIMIZERS, METHODS, MULTIPLIER_SCALES, PRIMALS
from ceag.metrics import disparity
from ceag.models import ARCHITECTURES, build_model
from ceag.prune import sparsity_report
from ceag.train import (
    METHOD_NAMES,
    CheckpointError,
    TrainConfig,
    Trainer,
    barrier,
    broadcast_from_main,
    fit_dense,
    load_checkpoint,
    rank_and_world,
    save_checkpoint,
)
from ceag.train.dense import DENSE_OPTIMIZERS

__all__ = [
    "METHOD_LABELS",
    "ExperimentConfig",
    "ExperimentResult",
    "RunResult",
    "dense_model",
    "resolution_note",
    "run_experiment",
]

#: Methods whose formulation the experiment's primal / multiplier_scale / dual_* fields set.
FORMULATION_METHODS = ("ceag", "ceag_batch")
METHOD_LABELS = {name: spec.label for name, spec in METHODS.items()}
#: The folder under ``output_root`` holding dense models shared between experiments (a
#: reserved name: experiment names may not start with ".").
DENSE_CACHE = ".dense-cache"
#: η_λ = DUAL_LR_PER_GROUPS / G when ExperimentConfig.dual_lr is None.
DUAL_LR_PER_GROUPS = 0.4


@dataclass
class ExperimentConfig:
    """One experiment: data, model, dense training, and the grid methods × sparsities × seeds.

    The sparse phase (GMP over ``pruning_epochs``, then ``mitigation_epochs`` with the
    constraints on) uses the paper's optimiser settings (:class:`ceag.train.TrainConfig`).
    ψ is reported over groups with at least ``min_count`` samples in the split.

    Defaults differ from the paper's where the small tabular models need it (tuned on adult
    and census-kdd, docs/results.md): a short GMP phase, a long mitigation phase (40 epochs:
    with the LR decays at 60/80/90% of the sparse epochs the constraints get 20 epochs at the
    full LR; with 20 they got 8, and the gaps froze mid-descent, docs/method.md), and
    η_λ = 0.4 / G unless ``dual_lr`` is given. Scaling η_λ by 1/G keeps the growth rate of
    Σ_g λ_g (which takes weight away from the average loss) about the same at any G:
    1e-2 at adult's 40 groups, 1e-3 at census-kdd's 400, where 1e-2 collapses the model.

    Faults: ``checkpoint_every_steps`` > 0 checkpoints runs within epochs too (a killed run
    loses at most that many steps); ``on_nonfinite`` ("stop" or "skip") is what a NaN / Inf
    loss, multiplier or gradient does, in dense training and in runs
    (:class:`ceag.train.TrainConfig`).
    """

    dataset: str = "adult"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    train_samples: int | None = None  # a fixed random subset of the training split (None: all)
    arch: str = "auto"
    hidden: tuple[int, ...] = (512, 512)

    dense_epochs: int = 8
    dense_lr: float = 1e-3
    dense_optimizer: str = "adam"

    methods: tuple[str, ...] = ("nft", "ceag")
    sparsities: tuple[float, ...] = (0.9,)
    seeds: tuple[int, ...] = (0,)

    tolerance: float = 0.01
    buffer_size: int = 40
    dual_lr: float | None = None  # None: DUAL_LR_PER_GROUPS / G
    max_multiplier_sum: float | None = None
    constrain_min_count: int = 0
    # CEAG's formulation (docs/method.md), for "ceag" and "ceag_batch"; "ceag_paper" is fixed.
    primal: str = "positive"
    multiplier_scale: str = "absolute"
    margin: float = 1.0
    dual_optimizer: str = "sgd"
    dual_kp: float = 0.0
    dual_ki: float = 1.0
    method_options: dict[str, Any] = field(default_factory=dict)  # more CEAG keywords, from Python
    pruning_epochs: int = 10
    mitigation_epochs: int = 40
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 256
    eval_batch_size: int = 4096
    pruning_scope: str = "layer"
    min_count: int = 30

    name: str | None = None
    output_root: str = "runs"
    data_root: str | None = None
    device: str = "cpu"
    progress: bool = True
    checkpoint_every_steps: int = 0
    on_nonfinite: str = "stop"

    # Fields that do not change any result (a finished experiment may be re-read with others);
    # on_nonfinite may differ where "stop" left no result (a stopped run may resume with "skip").
    PRESENTATION = ("name", "output_root", "data_root", "device", "progress", "checkpoint_every_steps", "on_nonfinite")

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.methods = tuple(self.methods)
        self.sparsities = tuple(float(s) for s in self.sparsities)
        self.seeds = tuple(self.seeds)
        self.dataset_options = dict(self.dataset_options)
        self.method_options = dict(self.method_options)
        self.validate()

    def validate(self) -> "ExperimentConfig":
        """Raise ValueError / TypeError naming the first bad field."""
        if self.dataset not in (*datasets.DATASETS, datasets.TABLE, datasets.IMAGES):
            raise ValueError(f"dataset must be one of {', '.join(datasets.DATASETS)}, table or images; got {self.dataset!r}")
        datasets.check_options(self.dataset, self.dataset_options)
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}; got {self.arch!r}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be one or more positive widths, got {self.hidden!r}")
        if self.dense_optimizer not in DENSE_OPTIMIZERS:
            raise ValueError(f"dense_optimizer must be one of {', '.join(DENSE_OPTIMIZERS)}; got {self.dense_optimizer!r}")
        if not self.methods:
            raise ValueError("methods must name at least one method")
        for m in self.methods:
            if m not in METHOD_NAMES:
                raise ValueError(f"methods: unknown method {m!r}; choose from {', '.join(METHOD_NAMES)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods has duplicates: {self.methods}")
        if not self.sparsities:
            raise ValueError("sparsities must hold at least one sparsity")
        for s in self.sparsities:
            if not (math.isfinite(s) and 0.0 <= s < 1.0):
                raise ValueError(f"sparsity must be in [0, 1), got {s}")
        labels: dict[str, float] = {}
        for s in self.sparsities:  # distinct sparsities must never share a run folder
            if sparsity_label(s) in labels:
                raise ValueError(
                    f"sparsities has duplicates: {labels[sparsity_label(s)]!r} and {s!r} are the same sparsity "
                    f"({sparsity_label(s)}%, to {_SPARSITY_DIGITS} significant digits)"
                )
            labels[sparsity_label(s)] = s
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be one or more integers >= 0, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds has duplicates: {self.seeds}")
        if max(self.seeds) >= 2**63:
            raise ValueError(f"seeds must be below 2**63, got {max(self.seeds)}")
        if self.train_samples is not None and (
            isinstance(self.train_samples, bool) or not isinstance(self.train_samples, int) or self.train_samples < 1
        ):
            raise ValueError(f"train_samples must be an integer >= 1 (or None for all), got {self.train_samples!r}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"tolerance (ε) must be >= 0, got {self.tolerance}")
        if isinstance(self.dense_epochs, bool) or not isinstance(self.dense_epochs, int) or self.dense_epochs < 0:
            raise ValueError(f"dense_epochs must be an integer >= 0, got {self.dense_epochs!r}")
        if not (math.isfinite(self.dense_lr) and self.dense_lr > 0):
            raise ValueError(f"dense_lr must be > 0, got {self.dense_lr}")
        if self.dual_lr is not None and not (math.isfinite(self.dual_lr) and self.dual_lr > 0):
            raise ValueError(f"dual_lr must be > 0 (or None for {DUAL_LR_PER_GROUPS} / G), got {self.dual_lr}")
        for name, allowed in (("primal", PRIMALS), ("multiplier_scale", MULTIPLIER_SCALES), ("dual_optimizer", DUAL_OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if not (isinstance(self.margin, (int, float)) and 0.0 <= self.margin <= 1.0):
            raise ValueError(f"margin must be in [0, 1], got {self.margin!r}")
        for name in ("dual_kp", "dual_ki"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.max_multiplier_sum is not None and not (math.isfinite(self.max_multiplier_sum) and self.max_multiplier_sum > 0):
            raise ValueError(f"max_multiplier_sum must be > 0 (or None), got {self.max_multiplier_sum}")
        if self.name is not None and (not self.name or "/" in self.name or "\\" in self.name or "\0" in self.name):
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")
        if self.name is not None and self.name.startswith("."):
            raise ValueError(f"name must not start with '.' (reserved for ceag's own folders, such as {DENSE_CACHE}); got {self.name!r}")
        # Every sparse-phase field and method option is checked by TrainConfig itself.
        for method in self.methods:
            self.train_config(method, self.sparsities[0], self.seeds[0], num_groups=1)
        return self

    def resolved_dual_lr(self, num_groups: int) -> float:
        """η_λ: ``dual_lr``, or ``DUAL_LR_PER_GROUPS / num_groups`` when it is None."""
        return self.dual_lr if self.dual_lr is not None else DUAL_LR_PER_GROUPS / num_groups

    def header(self, num_groups: int) -> str:
        """The line above a results table: data set, ε, η_λ, seeds."""
        return (
            f"{self.dataset}, ε = {self.tolerance:g}, η_λ = {self.resolved_dual_lr(num_groups):.3g}, "
            f"seeds {', '.join(map(str, self.seeds))}; ψ over groups with ≥ {self.min_count} samples; "
            "percent, mean ± std over seeds; **bold** max ψ: within ε."
        )

    def train_config(self, method: str, sparsity: float, seed: int, *, num_groups: int, output_dir: str | None = None) -> TrainConfig:
        """The :class:`TrainConfig` of one run of the grid."""
        return TrainConfig(
            num_groups=num_groups,
            method=method,
            tolerance=self.tolerance,
            buffer_size=self.buffer_size if method != "ceag_batch" else None,
            dual_lr=self.resolved_dual_lr(num_groups),
            constrain_min_count=self.constrain_min_count,
            dense_epochs=0,
            final_sparsity=sparsity,
            pruning_epochs=self.pruning_epochs,
            pruning_scope=self.pruning_scope,
            mitigation_epochs=self.mitigation_epochs,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            eval_batch_size=self.eval_batch_size,
            seed=seed,
            device=self.device,
            min_count=self.min_count,
            output_dir=output_dir,
            progress=self.progress,
            checkpoint_every_steps=self.checkpoint_every_steps,
            on_nonfinite=self.on_nonfinite,
            dual_optimizer=self.dual_optimizer if method in FORMULATION_METHODS else "sgd",
            method_options=self._method_options(method),
        )

    def _method_options(self, method: str) -> dict[str, Any]:
        spec = METHODS.get(method)
        if spec is not None and not spec.constrained:  # unknown names fail in TrainConfig
            return {}
        options: dict[str, Any] = {}
        if method in FORMULATION_METHODS:
            options.update(primal=self.primal, multiplier_scale=self.multiplier_scale, margin=self.margin)
            if self.dual_optimizer != "sgd":
                options["dual_optimizer_kwargs"] = {"Kp": self.dual_kp, "Ki": self.dual_ki}
            options.update(self.method_options)
        if self.max_multiplier_sum is not None:
            options["max_multiplier_sum"] = self.max_multiplier_sum
        return options

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("hidden", "methods", "sparsities", "seeds"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"ExperimentConfig: unknown fields {sorted(unknown)}")
        return cls(**d)

    def resolved_name(self) -> str:
        if self.name is not None:
            return self.name
        methods = "-".join(self.methods)
        sparsities = "-".join(sparsity_label(s) for s in self.sparsities)
        own = self.dataset in (datasets.TABLE, datasets.IMAGES)
        data = Path(self.dataset_options["path"]).stem if own else self.dataset
        return f"{data}-{methods}-s{sparsities}"

    @property
    def output_dir(self) -> Path:
        return Path(self.output_root) / self.resolved_name()


#: Significant digits of a sparsity (in %) in folder names; validation rejects two
#: sparsities that agree to this many digits, so distinct runs never share a folder.
_SPARSITY_DIGITS = 10


def sparsity_label(sparsity: float) -> str:
    """The sparsity in percent as it appears in folder names: ``0.9`` → ``"90"``, ``0.995`` → ``"99.5"``."""
    return f"{sparsity * 100:.{_SPARSITY_DIGITS}g}"


def run_dir_name(method: str, sparsity: float, seed: int) -> str:
    return f"{method}-s{sparsity_label(sparsity)}-seed{seed}"


# ---------------------------------------------------------------------------------------
# Dense model
# ---------------------------------------------------------------------------------------


def _dense_key(cfg: ExperimentConfig, data: datasets.GroupedDataset, seed: int) -> str:
    fields = {
        "dataset": cfg.dataset,
        "dataset_options": cfg.dataset_options,
        "arch": cfg.arch,
        "hidden": list(cfg.hidden),
        "dense_epochs": cfg.dense_epochs,
        "dense_lr": cfg.dense_lr,
        "dense_optimizer": cfg.dense_optimizer,
        "batch_size": cfg.batch_size,
        "seed": seed,
        "n": [len(data.train), len(data.test)],
        "shape": list(data.input_shape),
        "torch": torch.__version__.split("+")[0],
        "version": 1,
    }
    if cfg.dataset == datasets.TABLE:  # the file's content, not only its path
        fields["table"] = table_digest(cfg.dataset_options)
    if cfg.dataset == datasets.IMAGES:
        fields["images"] = image_digest(cfg.dataset_options)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return f"{cfg.dataset}-seed{seed}-{digest}"


def dense_model(
    cfg: ExperimentConfig, data: datasets.GroupedDataset, seed: int, *, log: Callable[[str], None] = print
) -> nn.Module:
    """The seed's trained dense model, from ``output_root/.dense-cache`` or trained now.

    Training: ``dense_epochs`` of Adam (or SGD with momentum 0.9) at ``dense_lr`` on the
    training split, batches of ``batch_size`` in the order :func:`ceag.train.epoch_permutation`
    gives, so the same key always yields the same model. A NaN / Inf loss or gradient raises
    :class:`ceag.train.NonFiniteError` (nothing cached) or skips the step, by
    ``cfg.on_nonfinite``.
    """
    cache = Path(cfg.output_root) / DENSE_CACHE / f"{_dense_key(cfg, data, seed)}.ckpt"
    rank, world = rank_and_world()
    if rank != 0:  # data parallel: rank 0 trains (or loads) and caches it; the others read it
        barrier()
        model = _fresh_model(cfg, data, seed)
        model.load_state_dict(load_checkpoint(cache)["model"])
        return model
    # One trainer per cache entry: a second process with the same key waits, then reads it.
    with lock(cache.with_suffix(".lock"), what=f"dense-cache entry {cache}", wait=True,
              on_wait=lambda pid: log(f"dense model (seed {seed}): waiting for PID {pid}, which is training it")):  # fmt: skip
        model = _cached_or_trained_dense_model(cfg, data, seed, cache, log)
    barrier()
    return model


def _fresh_model(cfg: ExperimentConfig, data: datasets.GroupedDataset, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(data.input_shape, data.num_classes, cfg.arch, cfg.hidden)


def _cached_or_trained_dense_model(
    cfg: ExperimentConfig, data: datasets.GroupedDataset, seed: int, cache: Path, log: Callable[[str], None]
) -> nn.Module:
    remove_temp_files(cache.parent, cache.name)  # left by killed runs (the entry is locked: no live writer)
    model = _fresh_model(cfg, data, seed)
    if cache.exists():
        try:
            model.load_state_dict(load_checkpoint(cache)["model"])
            log(f"dense model (seed {seed}): cached {cache}")
            return model
        except (CheckpointError, KeyError, TypeError, RuntimeError) as err:  # rebuilt, never trusted
            log(f"dense model (seed {seed}): ignoring unusable cache entry {cache} ({err})")
            model = _fresh_model(cfg, data, seed)  # load_state_dict may have copied part of it in
    start = time.perf_counter()
    x, y, _ = data.train.tensors
    skipped = fit_dense(
        model, x, y, epochs=cfg.dense_epochs, batch_size=cfg.batch_size, seed=seed, optimizer=cfg.dense_optimizer,
        lr=cfg.dense_lr, weight_decay=cfg.weight_decay, device=cfg.device, on_nonfinite=cfg.on_nonfinite,
        show_progress=cfg.progress, log=log,
    )  # fmt: skip
    model.cpu()
    save_checkpoint({"model": model.state_dict(), "key": cache.stem}, cache)
    log(
        f"dense model (seed {seed}): trained {cfg.dense_epochs} epochs in {time.perf_counter() - start:.1f} s"
        + (f", {skipped} non-finite steps skipped" if skipped else "")
    )
    return model


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------

#: Summary columns of a run, per split: (key in the report, header in the table, as percent).
_COLUMNS = (
    ("accuracy", "acc", True),
    ("psi_pw", "Ψ_PW", True),
    ("max_psi", "max ψ", True),
    ("frac_within_tolerance", "within ε", True),
)


@dataclass
class RunResult:
    """One (method, sparsity, seed) run: final summaries and per-group ψ on train and test."""

    method: str
    sparsity: float
    seed: int
    summary: dict[str, dict[str, float]]  # split -> DisparityReport.summary() + "accuracy"
    psi: dict[str, list[float]]  # split -> [G] ψ_g (NaN: excluded)
    count: dict[str, list[int]]  # split -> [G] samples
    history: list[dict[str, Any]]
    seconds_per_step: float  # mean wall time of a mitigation-phase training step
    measured_sparsity: float = math.nan  # of the final model's masked layers (the requested one is ``sparsity``)

    def to_dict(self) -> dict[str, Any]:
        # Shallow (the values are JSON-ready lists and dicts): dataclasses.asdict would deep-copy
        # the history, G multipliers per epoch.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunResult":
        if not isinstance(d, dict):
            raise TypeError(f"expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        if "measured_sparsity" not in d:  # written before it was recorded: the last epoch's
            d["measured_sparsity"] = (d.get("history") or [{}])[-1].get("sparsity", math.nan)
        run = cls(**d)
        for split in ("train", "test"):  # the report reads these: a wrong shape fails here, not there
            for key, _, _ in _COLUMNS:
                float(run.summary[split][key])
            if len(run.psi[split]) != len(run.count[split]):
                raise ValueError(f"psi and count of {split} differ in length")
        return run


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


@dataclass
class ExperimentResult:
    config: ExperimentConfig
    runs: list[RunResult]
    group_names: tuple[str, ...]
    output_dir: Path
    plots: list[Path] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One row per (sparsity, method): mean and std over seeds of every summary column."""
        out = []
        for sparsity in self.config.sparsities:
            for method in self.config.methods:
                runs = [r for r in self.runs if r.method == method and r.sparsity == sparsity]
                if not runs:
                    continue
                row: dict[str, Any] = {"method": method, "sparsity": sparsity, "seeds": len(runs)}
                for split in ("train", "test"):
                    for key, _, _ in _COLUMNS:
                        mean, std = _mean_std([r.summary[split][key] for r in runs])
                        row[f"{split}_{key}"], row[f"{split}_{key}_std"] = mean, std
                row["seconds_per_step"] = statistics.fmean(r.seconds_per_step for r in runs)
                row["measured_sparsity"] = _mean_std([r.measured_sparsity for r in runs])[0]
                out.append(row)
        return out

    def table(self) -> str:
        """The comparison as a markdown table (percent, mean ± std over seeds)."""
        eps = self.config.tolerance
        heads = ["sparsity (measured)", "method"]
        for split in ("train", "test"):
            heads += [f"{split} {h}" for _, h, _ in _COLUMNS]
        heads.append("ms/step")
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for row in self.rows():
            measured = "n/a" if math.isnan(row["measured_sparsity"]) else f"{row['measured_sparsity']:.2%}"
            cells = [f"{sparsity_label(row['sparsity'])}% ({measured})", METHOD_LABELS.get(row["method"], row["method"])]
            for split in ("train", "test"):
                for key, _, _ in _COLUMNS:
                    mean, std = row[f"{split}_{key}"], row[f"{split}_{key}_std"]
                    cell = "n/a" if math.isnan(mean) else f"{mean * 100:.1f}"
                    if row["seeds"] > 1 and not math.isnan(std):
                        cell += f" ± {std * 100:.1f}"
                    if key == "max_psi" and not math.isnan(mean) and mean <= eps:
                        cell = f"**{cell}**"  # within ε
                    cells.append(cell)
            cells.append(f"{row['seconds_per_step'] * 1e3:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "group_names": list(self.group_names),
            "rows": self.rows(),
            "runs": [r.to_dict() for r in self.runs],
            "plots": [str(p) for p in self.plots],
        }


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def _final_report(trainer: Trainer, data: datasets.GroupedDataset, cfg: ExperimentConfig) -> tuple[dict, dict, dict]:
    summary, psi, count = {}, {}, {}
    for split, ds, ref in (("train", data.train, trainer.dense_stats), ("test", data.test, trainer.dense_test_stats)):
        assert ref is not None
        stats = trainer.last_eval.get(split)
        if stats is None:  # no epoch ran in this process (a finished run re-opened): evaluate now
            stats = trainer._evaluate(ds)
        rep = disparity(ref, stats, cfg.tolerance, min_count=cfg.min_count)
        summary[split] = {**rep.summary(), "accuracy": stats.overall_accuracy}
        psi[split] = rep.psi.tolist()
        count[split] = stats.count.tolist()
    return summary, psi, count


#: The config fields that span the grid: a folder's experiment may grow along them.
_GRID = ("methods", "sparsities", "seeds")


def _check_config_file(cfg: ExperimentConfig, out: Path) -> ExperimentConfig:
    """Refuse to mix results of different configs in one folder; write config.json.

    The grid may grow: a re-run with other methods, sparsities or seeds adds them, and the
    returned config (the one written) spans the union, so the folder's report keeps every
    finished run. Any other difference raises :class:`~ceag.errors.UsageError`.
    """
    path = out / "config.json"
    merged = cfg
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise ValueError(f"expected a JSON object, got {type(saved).__name__}")
        except (ValueError, OSError) as err:
            raise UsageError(f"{path} is not a readable experiment config ({err}); delete it or choose another --name") from None
        now = {k: v for k, v in cfg.to_dict().items() if k not in cfg.PRESENTATION}
        diff = sorted(k for k in now if k not in _GRID and k not in cfg.PRESENTATION and now[k] != saved.get(k))
        if diff:
            raise UsageError(
                f"{out} holds an experiment with a different config ({', '.join(diff)} differ); "
                "choose another --name or delete the folder"
            )
        union = {}
        for k in _GRID:
            old = saved.get(k)
            old = [float(v) for v in old] if k == "sparsities" and isinstance(old, list) else old
            union[k] = tuple(dict.fromkeys([*(old if isinstance(old, list) else []), *getattr(cfg, k)]))
        try:
            merged = dataclasses.replace(cfg, **union)
        except (ValueError, TypeError) as err:
            raise UsageError(f"{path}: its grid cannot be extended ({err}); delete it or choose another --name") from None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(merged.to_dict(), indent=1).encode())
    return merged


def run_one(
    cfg: ExperimentConfig,
    data: datasets.GroupedDataset,
    dense: nn.Module,
    method: str,
    sparsity: float,
    seed: int,
    *,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[Trainer, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Fine-tune a copy of ``dense`` with ``method`` to ``sparsity`` (resumes; cached).

    ``on_epoch_end(trainer, row)``: called after every epoch (:attr:`ceag.train.Trainer.on_epoch_end`).
    """
    import copy

    out = cfg.output_dir / run_dir_name(method, sparsity, seed)
    metrics = out / "metrics.json"
    done = broadcast_from_main(_read_metrics(metrics, log) if rank_and_world()[0] == 0 else None)
    if done is not None:
        return done
    tcfg = cfg.train_config(method, sparsity, seed, num_groups=data.num_groups, output_dir=str(out))
    trainer = Trainer(tcfg, copy.deepcopy(dense), data.train, data.test)
    trainer.on_epoch_end = on_epoch_end
    trainer.fit(resume=True)
    summary, psi, count = _final_report(trainer, data, cfg)
    timing = trainer.timings.get("mitigation") or trainer.timings.get("pruning") or {"seconds": math.nan, "steps": 1}
    result = RunResult(
        method=method,
        sparsity=sparsity,
        seed=seed,
        summary=summary,
        psi=psi,
        count=count,
        history=trainer.history,
        seconds_per_step=timing["seconds"] / max(timing["steps"], 1),
        measured_sparsity=sparsity_report(trainer.model).masked_overall.sparsity,
    )
    if trainer.is_main:
        atomic_write(metrics, json.dumps(result.to_dict(), allow_nan=True).encode())
    return result


def _read_metrics(path: Path, log: Callable[[str], None]) -> RunResult | None:
    """The finished run's result from its ``metrics.json``; None if missing or unreadable."""
    if not path.exists():
        return None
    try:
        return RunResult.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as err:
        bad = path.with_name(path.name + ".corrupt")
        log(f"{path}: unreadable ({err}); moved to {bad.name}, the run is finished again from its checkpoint")
        path.replace(bad)
        return None


def _estimate_bytes(cfg: ExperimentConfig, data: datasets.GroupedDataset) -> int:
    """Room the experiment needs at least: a dense model and one run's checkpoints (last,
    prev and a temp file, each weights plus two momentum buffers), plus 1 MiB."""
    model = build_model(data.input_shape, data.num_classes, cfg.arch, cfg.hidden)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return 10 * weights + 2**20


def resolution_note(count: torch.Tensor, tolerance: float, min_count: int) -> str:
    """One line on the groups whose ψ_g moves by more than ε per sample, or "" if none.

    A group of n samples has accuracy steps of 1/n: with n < 1/ε one misclassified sample
    more than the average takes ψ_g past ε, so such groups end within ε only by losing no
    more samples than the average does, and their final ψ_g jumps by 1/n at every step.
    """
    if tolerance <= 0:
        return ""
    reported = count >= min_count
    coarse = reported & (count < 1 / tolerance)
    if not bool(coarse.any()):
        return ""
    smallest = int(count[reported].min())
    return (
        f"note: {int(coarse.sum())} of the {int(reported.sum())} groups with >= {min_count} training samples have "
        f"fewer than 1/ε = {1 / tolerance:.0f}: one sample moves their ψ_g by more than ε "
        f"(by {100 / smallest:.1f} points at n = {smallest})"
    )


def load_data(cfg: ExperimentConfig) -> datasets.GroupedDataset:
    """The experiment's data set, fetching it first if needed (real data sets only)."""
    if cfg.dataset in datasets.DATASETS and cfg.dataset != "synthetic" and not datasets.is_fetched(cfg.dataset, cfg.data_root):
        datasets.fetch(cfg.dataset, cfg.data_root, progress=cfg.progress)
    data = datasets.load(cfg.dataset, cfg.data_root, **cfg.dataset_options)
    if cfg.train_samples is not None:
        data = _train_subset(data, cfg.train_samples)
    return data


#: Seed of the ``train_samples`` subset: the same images for every run seed and method.
_SUBSET_SEED = 0


def _train_subset(data: datasets.GroupedDataset, n: int) -> datasets.GroupedDataset:
    """``data`` with a fixed random subset of ``n`` training samples (the test split whole)."""
    total = len(data.train)
    if n > total:
        raise UsageError(f"train_samples={n} is more than the {total} training samples of {data.name}")
    keep = torch.randperm(total, generator=torch.Generator().manual_seed(_SUBSET_SEED))[:n].sort().values
    subset = torch.utils.data.TensorDataset(*(t[keep] for t in data.train.tensors))
    return dataclasses.replace(data, train=subset, description=f"{data.description} (train subset: {n} of {total})")


def run_experiment(
    cfg: ExperimentConfig,
    *,
    log: Callable[[str], None] = print,
    plots: bool = True,
    on_epoch_end: Callable[[Trainer, dict[str, Any]], None] | None = None,
) -> ExperimentResult:
    """Run (or finish) every run of the grid, then write results.json/.md and plots.

    ``on_epoch_end(trainer, row)``: called after every epoch of every run trained now (e.g. to
    watch progress or memory); runs already finished are not trained again.
    """
    cfg.validate()
    out = cfg.output_dir
    if rank_and_world()[1] > 1 and rank_and_world()[0] != 0:  # data parallel (torchrun): rank 0 writes and logs
        return _run_experiment(cfg, out, log=lambda msg: None, plots=False, on_epoch_end=on_epoch_end)
    new_folder = not out.exists()
    check_output_dir(out)  # before fetching data or training: the folder takes files
    try:
        with lock(out / LOCK_NAME, what=f"experiment folder {out}"):
            return _run_experiment(cfg, out, log=log, plots=plots, on_epoch_end=on_epoch_end)
    except BaseException:
        if new_folder and {p.name for p in out.iterdir()} <= {LOCK_NAME}:  # failed before writing anything
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run_experiment(
    cfg: ExperimentConfig,
    out: Path,
    *,
    log: Callable[[str], None],
    plots: bool,
    on_epoch_end: Callable[[Trainer, dict[str, Any]], None] | None,
) -> ExperimentResult:
    main = rank_and_world()[0] == 0
    data = load_data(cfg)
    if main:
        check_output_dir(out, _estimate_bytes(cfg, data))
        folder_cfg = _check_config_file(cfg, out)
    grid = [(seed, s, m) for seed in cfg.seeds for s in cfg.sparsities for m in cfg.methods]
    log(
        f"{data.name}: {len(data.train)} train / {len(data.test)} test samples, {data.num_groups} groups; "
        f"{len(grid)} runs -> {out}"
    )
    counts = torch.bincount(data.train.tensors[2], minlength=data.num_groups)
    small = int(((counts > 0) & (counts < cfg.min_count)).sum())
    if small:
        log(f"reports: {small} of {int((counts > 0).sum())} groups have fewer than {cfg.min_count} training samples "
            f"and are left out of ψ (one sample moves their ψ_g by more than {100 / cfg.min_count:.1f} points; --min-count)")  # fmt: skip
    note = resolution_note(counts, cfg.tolerance, cfg.min_count)
    if note:
        log(note)
    runs: list[RunResult] = []
    for seed in cfg.seeds:
        dense = None
        for sparsity in cfg.sparsities:
            for method in cfg.methods:
                # Rank 0 decides (it may move a bad metrics.json aside); every rank follows.
                r = broadcast_from_main(_read_metrics(out / run_dir_name(method, sparsity, seed) / "metrics.json", log) if main else None)
                done = r is not None
                if dense is None and not done:
                    dense = dense_model(cfg, data, seed, log=log)
                start = time.perf_counter()
                if r is None:
                    r = run_one(cfg, data, dense, method, sparsity, seed,  # type: ignore[arg-type]
                                log=log, on_epoch_end=on_epoch_end)  # fmt: skip
                runs.append(r)
                tr, te = r.summary["train"], r.summary["test"]
                log(
                    f"[{len(runs)}/{len(grid)}] {METHOD_LABELS[method]:<5} sparsity {r.measured_sparsity:.1%} seed {seed}: "
                    f"train acc {tr['accuracy']:.1%} max ψ {tr['max_psi']:.1%} | "
                    f"test acc {te['accuracy']:.1%} max ψ {te['max_psi']:.1%}"
                    + (" (cached)" if done else f" ({time.perf_counter() - start:.0f} s)")
                )
    if not main:
        return ExperimentResult(cfg, runs, tuple(data.group_names), out)
    # Runs of earlier commands in this folder (other methods, sparsities or seeds) stay in its report.
    asked = {(r.method, r.sparsity, r.seed) for r in runs}
    for seed in folder_cfg.seeds:
        for sparsity in folder_cfg.sparsities:
            for method in folder_cfg.methods:
                if (method, sparsity, seed) not in asked:
                    earlier = _read_metrics(out / run_dir_name(method, sparsity, seed) / "metrics.json", log)
                    if earlier is not None:
                        runs.append(earlier)
    result = ExperimentResult(folder_cfg, runs, tuple(data.group_names), out)
    remove_temp_files(out)  # left by killed runs (results.json, config.json, ...)
    if plots:
        result.plots = write_plots(result)
    atomic_write(out / "results.json", _json_chunks(result.to_dict(), indent=1))
    atomic_write(out / "results.md", (_markdown(result) + "\n").encode())
    return result


def _json_chunks(obj: Any, indent: int | None = None, size: int = 1 << 20) -> Iterator[bytes]:
    """``json.dumps(obj, indent=indent, allow_nan=True)`` encoded, in pieces of about ``size``
    bytes, so a large file (every run's history: G multipliers per epoch) is never held whole."""
    parts: list[str] = []
    held = 0
    for piece in json.JSONEncoder(indent=indent, allow_nan=True).iterencode(obj):
        parts.append(piece)
        held += len(piece)
        if held >= size:
            yield "".join(parts).encode()
            parts, held = [], 0
    yield "".join(parts).encode()


def _markdown(result: ExperimentResult) -> str:
    cfg = result.config
    lines = [
        f"# {result.output_dir.name}",
        "",
        cfg.header(len(result.group_names)),
        "",
        result.table(),
    ]
    if result.plots:
        lines += ["", *[f"![{p.stem}](plots/{p.name})" for p in result.plots]]
    return "\n".join(lines)


def write_plots(result: ExperimentResult) -> list[Path]:
    """The paper's figures for this experiment, under ``output_dir/plots``."""
    from ceag.app import plots

    cfg = result.config
    eps = cfg.tolerance
    folder = result.output_dir / "plots"
    written: list[Path] = []
    label = lambda m: METHOD_LABELS.get(m, m)  # noqa: E731
    for sparsity in cfg.sparsities:
        runs = [r for r in result.runs if r.sparsity == sparsity]
        tag = f"s{sparsity_label(sparsity)}"
        for split in ("train", "test"):
            psi = {}
            for m in cfg.methods:
                per_seed = torch.tensor([r.psi[split] for r in runs if r.method == m], dtype=torch.float64)
                if len(per_seed):
                    psi[label(m)] = per_seed.nanmean(0)  # mean over seeds (NaN: excluded everywhere)
            counts = next(r.count[split] for r in runs)
            written.append(
                plots.group_gap_bars(psi, eps, folder / f"group_psi-{split}-{tag}.png",
                                     group_names=result.group_names, counts=counts, split=split)
            )  # fmt: skip
            histories = {label(m): [r.history for r in runs if r.method == m] for m in cfg.methods}
            written.append(plots.disparity_over_training(histories, eps, folder / f"psi_over_training-{split}-{tag}.png", split=split))
        for m in cfg.methods:
            first = next((r for r in runs if r.method == m), None)
            if first is None or not METHODS[m].constrained:
                continue
            rows = [h for h in first.history if "multipliers" in h]
            if rows:
                written.append(
                    plots.multiplier_trajectories(
                        [h["multipliers"] for h in rows], folder / f"multipliers-{m}-{tag}.png",
                        epochs=[h["epoch"] for h in rows], group_names=result.group_names,
                        title=f"{label(m)} multipliers, sparsity {sparsity:.0%}, seed {first.seed}",
                    )
                )  # fmt: skip
    if len(cfg.sparsities) > 1:
        for split in ("train", "test"):
            points = [
                {
                    "method": label(row["method"]),
                    "sparsity": row["sparsity"],
                    "accuracy": row[f"{split}_accuracy"],
                    "accuracy_std": row[f"{split}_accuracy_std"],
                    "max_psi": row[f"{split}_max_psi"],
                    "max_psi_std": row[f"{split}_max_psi_std"],
                    "psi_pw": row[f"{split}_psi_pw"],
                    "psi_pw_std": row[f"{split}_psi_pw_std"],
                }
                for row in result.rows()
            ]
            written.append(plots.tradeoff(points, eps, folder / f"tradeoff-{split}.png", split=split))
    return written
