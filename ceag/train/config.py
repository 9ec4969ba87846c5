"""The configuration of one training run: :class:`TrainConfig` and the checks on it."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ceag._options import option
from ceag.methods import DUAL_OPTIMIZERS, METHODS, build_method
from ceag.metrics import DEFAULT_MIN_COUNT, GroupStats
from ceag.nn import COMPACT_BELOW_DENSITY, STORAGES

METHOD_NAMES = tuple(METHODS)
NONFINITE_ACTIONS = ("stop", "skip")
#: What TrainConfig.dual_lr is per: one dual step, or one pass over the training data.
DUAL_LR_UNITS = ("step", "pass")


@dataclass
class TrainConfig:
    """Everything a run depends on (paper defaults where it has them).

    Phases: ``dense_epochs`` of dense training (0: the given model is the dense model), then
    ``pruning_epochs`` of GMP (cubic, ``initial_sparsity`` → ``final_sparsity``, pruning
    every ``pruning_frequency`` epochs at the start of the epoch; the final pruning happens
    at the start of sparse epoch ``pruning_epochs``, or of the last pruning epoch when
    ``mitigation_epochs`` is 0; 0 is one-shot pruning), then
    ``mitigation_epochs`` with the method's constraints active (unless
    ``constraints_during_pruning``, which activates them from the start).

    Optimisation: SGD (``lr``, ``momentum``, ``weight_decay``) over all trainable parameters,
    LR × ``lr_gamma`` at the fractions ``lr_milestones`` of the phase's epochs (dense phase
    with ``dense_lr``, sparse phase with ``lr``).

    Method: ``method`` in nft / el / el_rb / ceag / ceag_batch with ``tolerance`` (ε),
    ``buffer_size`` (k), ``dual_lr`` (per step, or per pass over the training data with
    ``dual_lr_unit="pass"``), ``dual_optimizer`` and any further keyword arguments of
    the method in ``method_options``. Groups with fewer than ``constrain_min_count`` training
    samples are left unconstrained (their λ_g stays 0); by default (None) that is ``min_count``,
    so the constrained groups are the groups the report judges, and 0 constrains every group.

    Reporting: ψ over groups with at least ``min_count`` samples; files in ``output_dir``
    (None: nothing written, no checkpoints); ``checkpoint_every_steps`` > 0 also checkpoints
    every that many steps within an epoch (0: at the end of each epoch only).

    Faults: ``on_nonfinite`` says what a step with a NaN / Inf loss, multiplier or gradient
    does: "stop" (default) raises :class:`NonFiniteError` after checkpointing the state
    before the step; "skip" undoes the step (no parameter update; method state and RNG as
    before it) and counts it in the epoch's ``skipped_steps``.
    """

    num_groups: int = option(help="number of groups (group ids are 0 .. num_groups - 1)")
    method: str = option("ceag", help="nft, el, el_rb, ceag, ceag_paper or ceag_batch")
    tolerance: float = option(0.01, help="ε, the largest excess accuracy gap ψ_g a group may keep")
    buffer_size: int | None = option(40, help="replay buffer length k: each group's last k predictions")
    dual_lr: float = option(1e-3, help="multiplier step size η_λ, per step or per pass over the data (--dual-lr-unit)")
    dual_lr_unit: str = option(
        "step",
        choices=DUAL_LR_UNITS,
        help="what dual_lr is per: step (each dual step moves λ by η_λ × violation) or pass (η_λ per step = "
        "dual_lr / steps per epoch: the same dual movement per epoch on a table of any size)",
    )
    dual_optimizer: str = option("sgd", help="the multipliers' update: sgd, pi (dense PI controller) or nupi (Cooper's)")
    method_options: dict[str, Any] = option(default_factory=dict, help="further keyword arguments of the method")
    constraints_during_pruning: bool = option(False, help="constrain from the first sparse epoch, not after pruning")
    constrain_min_count: int | None = option(
        None,
        help="leave groups with fewer training samples unconstrained (0: constrain every group)",
        default_text="--min-count: the reported groups are the constrained ones",
        parse=int,
    )

    dense_epochs: int = option(0, help="epochs of dense training before pruning (0: the model is trained)")
    dense_lr: float = option(1e-2, help="learning rate of dense training")
    initial_sparsity: float = option(0.0, help="sparsity of the first GMP step")
    final_sparsity: float = option(0.9, help="sparsity at the end of pruning")
    pruning_epochs: int = option(15, help="epochs of gradual magnitude pruning (the GMP phase, unconstrained)")
    pruning_frequency: int = option(1, help="prune every this many epochs during the GMP phase")
    pruning_scope: str = option("layer", help="magnitude threshold per layer or global", choices=("layer", "global"))
    mitigation_epochs: int = option(10, help="epochs of fine-tuning with the constraints on, after pruning")
    storage: str = option(
        "dense",
        choices=STORAGES,
        help="how pruned linear layers store their weights: dense (weight and mask), compact (only the kept "
        "weights: faster and smaller at high sparsity) or auto (compact once pruned below "
        f"{COMPACT_BELOW_DENSITY:g} density)",
    )

    lr: float = option(1e-2, help="learning rate of the sparse phase (SGD)")
    momentum: float = option(0.9, help="SGD momentum")
    weight_decay: float = option(1e-4, help="SGD weight decay")
    lr_milestones: tuple[float, ...] = option((0.6, 0.8, 0.9), help="fractions of a phase's epochs where the LR decays")
    lr_gamma: float = option(0.1, help="LR factor at each milestone")
    batch_size: int = option(128, help="training batch size")
    eval_batch_size: int = option(1024, help="evaluation batch size")
    num_workers: int = option(0, help="DataLoader workers for datasets that are not TensorDatasets")

    seed: int = option(0, help="seed of the data order, the RNGs and the dense model")
    device: str = option("cpu", help="cpu or cuda[:index]")
    eval_train: bool = option(True, help="evaluate on the training split after every epoch")
    eval_test: bool = option(True, help="evaluate on the test split after every epoch")
    min_count: int = option(DEFAULT_MIN_COUNT, help="report ψ for groups with at least this many samples")
    output_dir: str | None = option(None, help="folder of the run's files (None: no files, no checkpoints)")
    checkpoint_every_steps: int = option(0, help="also checkpoint every N training steps within an epoch (0: at epoch ends only)")
    progress: bool = option(True, help="progress bars")
    on_nonfinite: str = option(
        "stop",
        choices=NONFINITE_ACTIONS,
        help="a NaN/Inf loss, multiplier or gradient: stop (the state before the step is checkpointed) or skip "
        "the step (counted in the history)",
    )

    # Fields a resumed run may change without changing the result (on_nonfinite changes it
    # only where a run with "stop" has no result: a stopped run may resume with "skip").
    RESUMABLE_CHANGES = ("output_dir", "progress", "device", "num_workers", "checkpoint_every_steps", "on_nonfinite")

    def __post_init__(self) -> None:
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)
        self.method_options = dict(self.method_options)
        self.validate()

    # -- validation ------------------------------------------------------------------------

    def validate(self) -> TrainConfig:
        """Raise ValueError / TypeError naming the first bad field."""

        def bad(name: str, why: str) -> None:
            raise ValueError(f"TrainConfig.{name} {why}, got {getattr(self, name)!r}")

        def integer(name: str, lo: int, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"TrainConfig.{name} must be an int, got {v!r}")
            if v < lo:
                bad(name, f"must be >= {lo}")

        def real(name: str, lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = True) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, "must be a finite number")
            if v < lo or (lo_open and v == lo):
                bad(name, f"must be {'>' if lo_open else '>='} {lo}")
            if hi is not None and (v > hi or (hi_open and v == hi)):
                bad(name, f"must be {'<' if hi_open else '<='} {hi}")

        integer("num_groups", 1)
        if self.method not in METHOD_NAMES:
            bad("method", f"must be one of {', '.join(METHOD_NAMES)}")
        real("tolerance", 0.0)
        integer("buffer_size", 1, allow_none=True)
        if METHODS[self.method].uses_buffers and self.buffer_size is None:
            bad("buffer_size", f"must be set for method {self.method!r} (use 'ceag_batch' for none)")
        real("dual_lr", 0.0, lo_open=True)
        if self.dual_lr_unit not in DUAL_LR_UNITS:
            bad("dual_lr_unit", f"must be one of {', '.join(DUAL_LR_UNITS)}")
        if not isinstance(self.dual_optimizer, str) or self.dual_optimizer not in DUAL_OPTIMIZERS:
            bad("dual_optimizer", f"must be one of {', '.join(DUAL_OPTIMIZERS)}")
        for name in ("dense_epochs", "pruning_epochs", "mitigation_epochs"):
            integer(name, 0)
        if self.sparse_epochs == 0:
            raise ValueError(
                "TrainConfig.pruning_epochs + mitigation_epochs must be >= 1: the sparse phase prunes and "
                f"fine-tunes the model, got {self.pruning_epochs} + {self.mitigation_epochs}"
            )
        integer("pruning_frequency", 1)
        real("initial_sparsity", 0.0, 1.0)
        real("final_sparsity", 0.0, 1.0)
        if self.initial_sparsity > self.final_sparsity:
            bad("initial_sparsity", f"must be <= final_sparsity ({self.final_sparsity})")
        if self.storage not in STORAGES:
            bad("storage", f"must be one of {', '.join(STORAGES)}")
        if self.pruning_scope not in ("layer", "global"):
            bad("pruning_scope", "must be 'layer' or 'global'")
        real("lr", 0.0, lo_open=True)
        real("dense_lr", 0.0, lo_open=True)
        real("momentum", 0.0, 1.0)
        real("weight_decay", 0.0)
        real("lr_gamma", 0.0, 1.0, lo_open=True, hi_open=False)
        for m in self.lr_milestones:
            if not 0.0 < m < 1.0:
                bad("lr_milestones", "must hold fractions in (0, 1)")
        integer("batch_size", 1)
        integer("eval_batch_size", 1)
        integer("num_workers", 0)
        integer("min_count", 1)
        integer("constrain_min_count", 0, allow_none=True)
        integer("checkpoint_every_steps", 0)
        if self.on_nonfinite not in NONFINITE_ACTIONS:
            bad("on_nonfinite", "must be 'stop' or 'skip'")
        integer("seed", 0)
        if self.seed >= 2**63:
            bad("seed", "must be below 2**63")
        check_device(self.device, "TrainConfig.device")
        self._check_method()
        return self

    def _check_method(self) -> None:
        """Build the method once on placeholder statistics, so a bad option (backend, an
        unknown keyword) fails here, before any training, naming itself."""
        G = self.num_groups
        if G > 1_000_000:  # the check allocates O(G · k); the run itself validates later
            return
        stats = GroupStats(
            count=torch.ones(G, dtype=torch.long),
            correct=torch.ones(G, dtype=torch.long),
            loss_sum=torch.zeros(G, dtype=torch.float64),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                build_method(self.method, G, dense=stats, **self.method_kwargs())
            except TypeError as err:
                raise TypeError(f"TrainConfig.method_options: {err}") from None
            except ValueError as err:
                raise ValueError(f"TrainConfig.method_options / {self.method}: {err}") from None

    # -- derived ---------------------------------------------------------------------------

    @property
    def sparse_epochs(self) -> int:
        return self.pruning_epochs + self.mitigation_epochs

    @property
    def constrained_min_count(self) -> int:
        """The fewest training samples a constrained group has: ``constrain_min_count``, or
        ``min_count`` when it is None (0: every group is constrained)."""
        return self.min_count if self.constrain_min_count is None else self.constrain_min_count

    @property
    def total_epochs(self) -> int:
        return self.dense_epochs + self.sparse_epochs

    def steps_per_epoch(self, num_train: int) -> int:
        """Optimizer steps in one pass over ``num_train`` samples (the global batch, any world size)."""
        return steps_per_epoch(num_train, self.batch_size)

    def dual_lr_per_step(self, steps_per_epoch: int) -> float:
        """η_λ of one dual step: ``dual_lr``, or ``dual_lr / steps_per_epoch`` when it is per pass."""
        return self.dual_lr / steps_per_epoch if self.dual_lr_unit == "pass" else self.dual_lr

    def method_kwargs(self, steps_per_epoch: int = 1) -> dict[str, Any]:
        """Keyword arguments of :func:`ceag.methods.build_method` for this config, for a
        training split of ``steps_per_epoch`` steps (what a per-pass ``dual_lr`` is spread over)."""
        kw: dict[str, Any] = {}
        spec = METHODS[self.method]
        if spec.constrained:
            dual_lr = self.dual_lr_per_step(steps_per_epoch)
            kw.update(tolerance=self.tolerance, dual_lr=dual_lr, dual_optimizer=self.dual_optimizer)
            kw["active"] = self.constraints_during_pruning
        if spec.uses_buffers:
            kw["buffer_size"] = self.buffer_size
        kw.update(self.method_options)
        return kw

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"TrainConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a torch.device that this machine has: "cpu" or an available "cuda[:i]";
    ValueError naming ``name`` otherwise (meta, "cpu:1", CUDA on a CPU-only build, ...)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} {device!r} is not a torch device (use cpu or cuda[:index])") from None
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise ValueError(f"{name} {device!r}: there is one CPU device; use cpu")
    elif dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"{name} {device!r} is not available: {why}; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    else:
        raise ValueError(f"{name} {device!r} is not supported: ceag trains on cpu or cuda")
    return dev


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Optimizer steps in one pass over ``num_train`` samples in batches of ``batch_size``."""
    return max(math.ceil(num_train / batch_size), 1)


def milestones(fracs: Sequence[float], epochs: int) -> list[int]:
    """The epochs (of ``epochs``) at the fractions ``fracs``: the LR decay points of a phase."""
    return sorted({int(round(f * epochs)) for f in fracs if 0 < int(round(f * epochs)) < max(epochs, 1)})
