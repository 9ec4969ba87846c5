"""The configuration of an experiment: data, model, dense training and the grid of runs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ceag.app import data as datasets
from ceag.methods import DUAL_OPTIMIZERS, METHODS, MULTIPLIER_SCALES, PRIMALS
from ceag.models import ARCHITECTURES
from ceag.train import (
    METHOD_NAMES,
    TrainConfig,
)
from ceag.train.dense import DENSE_OPTIMIZERS

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
