"""The configuration of one training run: :class:`TrainConfig` and the checks on it."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ceag.methods import DUAL_OPTIMIZERS, METHODS, build_method
from ceag.metrics import DEFAULT_MIN_COUNT, GroupStats

METHOD_NAMES = tuple(METHODS)
NONFINITE_ACTIONS = ("stop", "skip")


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
    ``buffer_size`` (k), ``dual_lr``, ``dual_optimizer`` and any further keyword arguments of
    the method in ``method_options``; ``constrain_min_count`` > 0 leaves groups with fewer
    training samples unconstrained (their λ_g stays 0).

    Reporting: ψ over groups with at least ``min_count`` samples; files in ``output_dir``
    (None: nothing written, no checkpoints); ``checkpoint_every_steps`` > 0 also checkpoints
    every that many steps within an epoch (0: at the end of each epoch only).

    Faults: ``on_nonfinite`` says what a step with a NaN / Inf loss, multiplier or gradient
    does: "stop" (default) raises :class:`NonFiniteError` after checkpointing the state
    before the step; "skip" undoes the step (no parameter update; method state and RNG as
    before it) and counts it in the epoch's ``skipped_steps``.
    """

    num_groups: int
    method: str = "ceag"
    tolerance: float = 0.01
    buffer_size: int | None = 40
    dual_lr: float = 1e-3
    dual_optimizer: str = "sgd"
    method_options: dict[str, Any] = field(default_factory=dict)
    constraints_during_pruning: bool = False
    constrain_min_count: int = 0

    dense_epochs: int = 0
    dense_lr: float = 1e-2
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.9
    pruning_epochs: int = 15
    pruning_frequency: int = 1
    pruning_scope: str = "layer"
    mitigation_epochs: int = 10

    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_milestones: tuple[float, ...] = (0.6, 0.8, 0.9)
    lr_gamma: float = 0.1
    batch_size: int = 128
    eval_batch_size: int = 1024
    num_workers: int = 0

    seed: int = 0
    device: str = "cpu"
    eval_train: bool = True
    eval_test: bool = True
    min_count: int = DEFAULT_MIN_COUNT
    output_dir: str | None = None
    checkpoint_every_steps: int = 0
    progress: bool = True
    on_nonfinite: str = "stop"

    # Fields a resumed run may change without changing the result (on_nonfinite changes it
    # only where a run with "stop" has no result: a stopped run may resume with "skip").
    RESUMABLE_CHANGES = ("output_dir", "progress", "device", "num_workers", "checkpoint_every_steps", "on_nonfinite")

    def __post_init__(self) -> None:
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)
        self.method_options = dict(self.method_options)
        self.validate()

    # -- validation ------------------------------------------------------------------------

    def validate(self) -> "TrainConfig":
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
        integer("constrain_min_count", 0)
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
        stats = GroupStats(count=torch.ones(G, dtype=torch.long), correct=torch.ones(G, dtype=torch.long),
                           loss_sum=torch.zeros(G, dtype=torch.float64))  # fmt: skip
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
    def total_epochs(self) -> int:
        return self.dense_epochs + self.sparse_epochs

    def method_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`ceag.methods.build_method` for this config."""
        kw: dict[str, Any] = {}
        spec = METHODS[self.method]
        if spec.constrained:
            kw.update(tolerance=self.tolerance, dual_lr=self.dual_lr, dual_optimizer=self.dual_optimizer)
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
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
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

def milestones(fracs: Sequence[float], epochs: int) -> list[int]:
    """The epochs (of ``epochs``) at the fractions ``fracs``: the LR decay points of a phase."""
    return sorted({int(round(f * epochs)) for f in fracs if 0 < int(round(f * epochs)) < max(epochs, 1)})
