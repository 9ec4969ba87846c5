"""Training pipeline: dense statistics → GMP phase → mitigation phase, with checkpoints.

:class:`Trainer` runs, for one :class:`TrainConfig`::

    dense training (optional, ``dense_epochs``; skip it by passing a trained model)
    dense statistics on train and test (once, eval mode, before any pruning)
    sparse phase, epoch e = 0 .. pruning_epochs + mitigation_epochs - 1:
        GMP prunes at the start of the epoch when due (cubic schedule, end at e = pruning_epochs)
        constraints active from e = pruning_epochs on (the GMP phase is NFT)
        SGD steps (method.step → backward → step → re-apply masks), step LR decay at 60/80/90%
        evaluation on train and test: accuracy, loss, Ψ_PW, max ψ, fraction within ε
    history → ``history.json`` / ``history.csv`` in ``output_dir``; checkpoint ``last.ckpt``
    (the one before it kept as ``prev.ckpt``)

Data: ``train_set`` is a map-style dataset of ``(inputs, target, group)`` samples (a
``TensorDataset`` is indexed in whole batches, without a DataLoader). Epoch ``e``'s order is
``randperm`` of a ``torch.Generator`` seeded by ``(seed, e)``, so the data order is a pure
function of the config and a resumed run sees exactly the batches an uninterrupted one would.

Checkpoints hold everything the rest of the run depends on: weights and masks, optimizer and
LR scheduler, the method's state (multipliers, dual optimizer, replay buffers), the GMP
schedule position, epoch / batch counters, dense statistics, history, and the RNG states
(torch CPU and CUDA, ``random``, numpy). They are written atomically (temporary file in the
same folder, fsync, ``os.replace``) with a SHA-256 of the payload in a header, so a
truncated or corrupted file raises :class:`CheckpointError`. With
``checkpoint_every_steps`` a run can also resume mid-epoch, exactly. Each save, once the
new file is written, moves the old ``last.ckpt`` to ``prev.ckpt``; ``fit(resume=True)`` falls
back to ``prev.ckpt`` (with a warning naming the bad file) when ``last.ckpt`` is missing,
truncated or corrupted.

Faults: every step checks its loss, the multipliers and the gradient norm; a NaN / Inf stops
the run with :class:`NonFiniteError` after checkpointing the state before that step
(``on_nonfinite="stop"``), or the step is undone and counted in the history
(``on_nonfinite="skip"``). Before training, the output folder must take a probe file and
have room for a few checkpoints; a failed write raises :class:`OutputError` naming the file.

Data-parallel (``torch.distributed`` initialised, world size W > 1): every rank takes its
contiguous 1/W slice of each global batch, gradients are averaged by
``DistributedDataParallel``, and constrained methods all-reduce their buffer statistics so
every rank holds the same multipliers; rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ceag._io import (
    CEAG_CHECKPOINT_MAGIC,
    LOCK_NAME,
    CorruptFileError,
    FolderInUseError,
    OutputError,
    atomic_write,
    check_output_dir,
    lock,
    read_verified,
    remove_temp_files,
    write_verified,
)
from ceag.methods import DUAL_OPTIMIZERS, METHODS, ConstrainedMethod, Method, build_method
from ceag.metrics import DEFAULT_MIN_COUNT, GroupStats, dense_reference, disparity, evaluate
from ceag.prune import GMPSchedule, apply_masks_, prunable_layers, sparsify, sparsity_report

__all__ = [
    "CheckpointError",
    "FolderInUseError",
    "NonFiniteError",
    "OutputError",
    "TrainConfig",
    "Trainer",
    "check_output_dir",
    "epoch_permutation",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]

METHOD_NAMES = tuple(METHODS)
CHECKPOINT_NAME = "last.ckpt"
PREVIOUS_CHECKPOINT_NAME = "prev.ckpt"
NONFINITE_ACTIONS = ("stop", "skip")
_MAGIC = CEAG_CHECKPOINT_MAGIC


# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------


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


def _milestones(fracs: Sequence[float], epochs: int) -> list[int]:
    return sorted({int(round(f * epochs)) for f in fracs if 0 < int(round(f * epochs)) < max(epochs, 1)})


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch``: ``randperm`` of a generator seeded by (seed, epoch)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + 1) % (2**63 - 1))
    return torch.randperm(num_samples, generator=gen)


# ---------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------


#: (path, epoch, global step) of the newest run checkpoint this process wrote: what an
#: interrupted ``ceag`` command says it leaves behind.
_LAST_SAVED: tuple[Path, int, int] | None = None


def last_saved() -> tuple[Path, int, int] | None:
    """``(path, epoch, global_step)`` of the newest ``last.ckpt`` this process wrote, or None."""
    return _LAST_SAVED


class CheckpointError(CorruptFileError):
    """A checkpoint file is truncated, corrupted or not a ceag checkpoint."""


class NonFiniteError(RuntimeError):
    """A training step produced a NaN / Inf loss, multiplier or gradient (``on_nonfinite="stop"``)."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, *, previous: str | os.PathLike | None = None) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    Layout: magic line, JSON header line (payload length and SHA-256), ``torch.save`` payload
    (:func:`ceag._io.write_verified`). A crash at any point leaves either the previous file or
    the new one, never a mix. ``previous``: once the new file is on disk, the old ``path`` (if
    any) is first renamed to this, so the checkpoint before the newest survives (a crash
    between the two renames leaves only ``previous``).
    """
    return write_verified(state, path, magic=_MAGIC, backup=previous)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying length and SHA-256.

    Only tensors and plain Python values are unpickled: a crafted file that would run code
    raises :class:`CheckpointError` instead.
    """
    return read_verified(path, magic=_MAGIC, what="checkpoint", error=CheckpointError, map_location=map_location)


# ---------------------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    # numpy's state as a tensor and plain values: checkpoints load with weights_only=True.
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    if isinstance(n, tuple):  # written before the state was stored as a tensor
        np.random.set_state(n)
    else:
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------


def barrier() -> None:
    """``torch.distributed.barrier()`` when several processes train together; else nothing."""
    if _dist()[1] > 1:
        torch.distributed.barrier()


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object); ``obj`` itself in one process."""
    if _dist()[1] == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _dist() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


# ---------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


class Trainer:
    """Runs a :class:`TrainConfig` on a model and data sets; see the module docstring.

    Args:
        config: the run's configuration.
        model: the classifier; its Linear / Conv2d layers are made masked with
            :func:`ceag.prune.sparsify` (first conv and last linear kept dense) unless it
            already has masked layers.
        train_set: map-style dataset of ``(inputs, target, group)`` samples.
        test_set: the same for evaluation (optional).
        dense_stats: the dense model's train-set :class:`GroupStats`, if already known
            (otherwise computed from the model before pruning).

    After :meth:`fit`: :attr:`history` (one dict per epoch), :attr:`method`,
    :attr:`dense_stats` / :attr:`dense_test_stats`, the trained :attr:`model`.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        train_set: Dataset,
        test_set: Dataset | None = None,
        *,
        dense_stats: GroupStats | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config.validate()
        self.device = torch.device(config.device)
        self.rank, self.world_size = _dist()
        if not prunable_layers(model):
            model = sparsify(model)
        if not prunable_layers(model) and config.final_sparsity > 0:
            raise ValueError("the model has no Linear / Conv2d layer to prune")
        self.model = model.to(self.device)
        self.train_set = train_set
        self.test_set = test_set
        self.num_train = len(train_set)  # type: ignore[arg-type]
        if self.num_train == 0:
            raise ValueError("train_set is empty")

        self.schedule = GMPSchedule(
            config.initial_sparsity,
            config.final_sparsity,
            start_step=0,
            # With no mitigation epochs the final pruning step moves to the last pruning epoch,
            # so the model always ends at final_sparsity.
            end_step=min(config.pruning_epochs, max(config.sparse_epochs - 1, 0)),
            frequency=config.pruning_frequency,
            scope=config.pruning_scope,
        )
        params = self._params = [p for p in self.model.parameters() if p.requires_grad]
        # Buffers a forward pass updates (BatchNorm running statistics): undone with a bad step.
        self._running_stats = [
            b for m in self.model.modules() if getattr(m, "track_running_stats", False) for b in m.buffers(recurse=False)
        ]
        self.dense_optimizer = torch.optim.SGD(
            params, lr=config.dense_lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.dense_scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.dense_optimizer, _milestones(config.lr_milestones, config.dense_epochs), config.lr_gamma
        )
        self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, _milestones(config.lr_milestones, config.sparse_epochs), config.lr_gamma
        )
        self.ddp: nn.Module | None = None
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model, device_ids=None if self.device.type == "cpu" else [self.device])

        self.dense_stats: GroupStats | None = dense_stats.cpu() if dense_stats is not None else None
        self.dense_test_stats: GroupStats | None = None
        self.method: Method | None = None
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # global epoch (dense then sparse) of the next batch
        self.batch = 0  # batches done within self.epoch
        self.global_step = 0
        self._accum = self._zero_accum()
        self._started = False
        self._keep_previous = True  # False after resuming from prev.ckpt: don't rotate a bad last.ckpt over it
        self.on_batch_end: Callable[["Trainer"], None] | None = None  # test / user hook
        # Called after each epoch's history row is recorded and checkpointed, with that row.
        self.on_epoch_end: Callable[["Trainer", dict[str, Any]], None] | None = None
        # Wall-clock seconds and steps of the training loops per phase, this process only (not
        # checkpointed: timings are not part of the run's result).
        self.timings: dict[str, dict[str, float]] = {}
        # split -> GroupStats of the latest epoch's evaluation in this process (not checkpointed),
        # so a caller reporting on the final model need not evaluate it again.
        self.last_eval: dict[str, GroupStats] = {}

    # -- paths -----------------------------------------------------------------------------

    @property
    def output_dir(self) -> Path | None:
        return Path(self.config.output_dir) if self.config.output_dir is not None else None

    @property
    def checkpoint_path(self) -> Path | None:
        return self.output_dir / CHECKPOINT_NAME if self.output_dir is not None else None

    @property
    def previous_checkpoint_path(self) -> Path | None:
        """The checkpoint before :attr:`checkpoint_path`, the fallback when it is unusable."""
        return self.output_dir / PREVIOUS_CHECKPOINT_NAME if self.output_dir is not None else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- data ------------------------------------------------------------------------------

    def _batches(
        self, dataset: Any, order: torch.Tensor | None, batch_size: int, start: int = 0, split: bool = True
    ) -> Iterator[tuple]:
        """Batches of ``dataset`` at ``order`` (None: in index order), from batch ``start``;
        with ``split``, this rank's contiguous slice of each (data-parallel).

        Lazy: one batch's indices at a time, never a list over the epoch. A ``TensorDataset``
        is gathered in whole batches (in index order: row slices of its tensors, no copy);
        another dataset goes through a DataLoader whose batch sampler makes each batch's index
        list only when the loader asks for it.
        """
        part = (self.rank, self.world_size) if split and self.world_size > 1 else None
        chunks = _IndexBatches(len(dataset) if order is None else order, batch_size, start, part)
        if isinstance(dataset, TensorDataset):
            for idx in chunks:
                if isinstance(idx, slice):
                    yield tuple(t[idx].contiguous() for t in dataset.tensors)  # views, unless not contiguous
                else:
                    yield tuple(t[idx] for t in dataset.tensors)
            return
        loader = DataLoader(dataset, batch_sampler=_ListBatches(chunks), num_workers=self.config.num_workers)
        yield from loader

    def _eval_batches(self, dataset: Any) -> Iterable:
        if isinstance(dataset, (TensorDataset, Dataset)) and hasattr(dataset, "__len__"):
            # Every rank evaluates the whole split, in index order.
            return self._batches(dataset, None, self.config.eval_batch_size, split=False)
        return dataset  # any iterable of (inputs, target, group) batches

    def _evaluate(self, dataset: Any) -> GroupStats:
        return evaluate(self.model, self._eval_batches(dataset), self.config.num_groups, device=self.device)

    # -- set-up ----------------------------------------------------------------------------

    def _build_method(self) -> Method:
        assert self.dense_stats is not None
        kwargs = self.config.method_kwargs()
        if METHODS[self.config.method].constrained and self.config.constrain_min_count > 0:
            kwargs["constrained"] = self.dense_stats.count >= self.config.constrain_min_count
        return build_method(self.config.method, self.config.num_groups, dense=self.dense_stats, device=self.device, **kwargs)

    def _compute_dense_stats(self) -> None:
        if self.dense_stats is None:
            self.dense_stats = dense_reference(
                self.model, self._eval_batches(self.train_set), self.config.num_groups, device=self.device
            )
        if self.test_set is not None and self.dense_test_stats is None:
            self.dense_test_stats = self._evaluate(self.test_set)
        self.method = self._build_method()

    # -- phases ----------------------------------------------------------------------------

    def phase(self, epoch: int) -> str:
        c = self.config
        if epoch < c.dense_epochs:
            return "dense"
        return "pruning" if epoch - c.dense_epochs < c.pruning_epochs else "mitigation"

    @staticmethod
    def _zero_accum() -> dict[str, float]:
        return {"loss_sum": 0.0, "mean_loss_sum": 0.0, "batches": 0, "skipped": 0}

    def _train_module(self) -> nn.Module:
        return self.ddp if self.ddp is not None else self.model

    def _start_epoch(self, epoch: int) -> None:
        """Epoch-start events (idempotent, so re-running them on a mid-epoch resume is harmless)."""
        c = self.config
        if epoch < c.dense_epochs:
            return
        if self.method is None:
            self._compute_dense_stats()
        e = epoch - c.dense_epochs
        self.schedule.step(self.model, e, optimizer=self.optimizer)
        if isinstance(self.method, ConstrainedMethod):
            self.method.active = c.constraints_during_pruning or e >= c.pruning_epochs

    def _train_epoch(self, epoch: int, stop_at_step: int | None) -> None:
        c = self.config
        dense = epoch < c.dense_epochs
        optimizer = self.dense_optimizer if dense else self.optimizer
        order = epoch_permutation(self.num_train, c.seed, epoch)
        num_batches = math.ceil(self.num_train / c.batch_size)
        module = self._train_module()
        module.train()
        from tqdm.auto import tqdm

        bar = tqdm(
            self._batches(self.train_set, order, c.batch_size, start=self.batch),
            total=num_batches,
            initial=self.batch,
            desc=f"epoch {epoch} ({self.phase(epoch)})",
            leave=False,
            disable=not (c.progress and self.is_main),
        )
        timing = self.timings.setdefault(self.phase(epoch), {"seconds": 0.0, "steps": 0})
        start = time.perf_counter()
        for inputs, target, group in bar:
            inputs, target, group = (t.to(self.device, non_blocking=True) for t in (inputs, target, group))
            undo = self._undo_point(dense)
            logits = module(inputs)
            lam = None
            if dense:
                loss = nn.functional.cross_entropy(logits, target)
                mean_loss = loss.detach()
            else:
                out = self.method.step(logits, target, group)  # type: ignore[union-attr]
                loss, mean_loss = out.loss, out.mean_loss
                if isinstance(self.method, ConstrainedMethod):
                    lam = out.multipliers
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            bad = _nonfinite(loss, self._params, lam)
            if bad:
                what = _listing(bad)
                self._undo(undo)
                optimizer.zero_grad(set_to_none=True)
                where = (
                    f"epoch {epoch} ({self.phase(epoch)}), step {self.global_step + 1} "
                    f"(batch {self.batch + 1} of {num_batches})"
                )
                if c.on_nonfinite == "stop":
                    timing["seconds"] += time.perf_counter() - start
                    saved = self.save()  # the state before this step
                    raise NonFiniteError(
                        f"non-finite {what} at {where}; stopped"
                        + (f", the state before this step is saved in {saved}" if saved is not None else "")
                        + ". Lower the learning rates, check the data for NaN / Inf, or set on_nonfinite='skip' "
                        "(--on-nonfinite skip) to skip such steps"
                    )
                self._accum["skipped"] = self._accum.get("skipped", 0) + 1
                warnings.warn(f"skipped {where}: non-finite {what}", RuntimeWarning, stacklevel=2)
            else:
                optimizer.step()
                apply_masks_(self.model)
                self._accum["loss_sum"] += float(loss.detach())
                self._accum["mean_loss_sum"] += float(mean_loss)
                self._accum["batches"] += 1
            self.batch += 1
            self.global_step += 1
            timing["steps"] += 1
            if self.on_batch_end is not None:
                self.on_batch_end(self)
            every = c.checkpoint_every_steps
            if every and self.global_step % every == 0 and self.batch < num_batches:
                self.save()
            if stop_at_step is not None and self.global_step >= stop_at_step:
                timing["seconds"] += time.perf_counter() - start
                raise _Stop
        timing["seconds"] += time.perf_counter() - start
        bar.close()

    def _undo_point(self, dense: bool) -> tuple:
        """What a step changes before its loss is checked: method state, RNG, running stats."""
        method = self.method.state_dict() if self.method is not None and not dense else None
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return method, torch.get_rng_state(), cuda, [b.clone() for b in self._running_stats]

    def _undo(self, point: tuple) -> None:
        method, rng, cuda, stats = point
        if method is not None:
            self.method.load_state_dict(method)  # type: ignore[union-attr]
        torch.set_rng_state(rng)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
        for b, saved in zip(self._running_stats, stats):
            b.copy_(saved)

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        c = self.config
        dense = epoch < c.dense_epochs
        lr = (self.dense_optimizer if dense else self.optimizer).param_groups[0]["lr"]  # this epoch's
        (self.dense_scheduler if dense else self.scheduler).step()
        n = max(self._accum["batches"], 1)
        row: dict[str, Any] = {
            "epoch": epoch,
            "phase": self.phase(epoch),
            "step": self.global_step,
            "lr": lr,
            "sparsity": sparsity_report(self.model).masked_overall.sparsity,
            "active": bool(isinstance(self.method, ConstrainedMethod) and self.method.active and not dense),
            "train_objective": self._accum["loss_sum"] / n,
            "train_batch_loss": self._accum["mean_loss_sum"] / n,
            "skipped_steps": int(self._accum.get("skipped", 0)),
        }
        lam = self.method.multipliers.cpu() if self.method is not None and not dense else None
        row["multiplier_sum"] = float(lam.sum()) if lam is not None else 0.0
        row["multiplier_max"] = float(lam.max()) if lam is not None else 0.0
        if isinstance(self.method, ConstrainedMethod) and not dense:
            row["multipliers"] = lam.tolist()  # [G] trajectories for plots; JSON only, not CSV
        splits = []
        if c.eval_train:
            splits.append(("train", self.train_set, self.dense_stats))
        if c.eval_test and self.test_set is not None:
            splits.append(("test", self.test_set, self.dense_test_stats))
        self.last_eval = {}
        for name, data, ref in splits:
            stats = self.last_eval[name] = self._evaluate(data)
            row[f"{name}_accuracy"] = stats.overall_accuracy
            row[f"{name}_loss"] = stats.overall_loss
            if ref is not None and not dense:
                s = disparity(ref, stats, c.tolerance, min_count=c.min_count).summary()
                row[f"{name}_accuracy_gap"] = s["accuracy_gap"]
                row[f"{name}_psi_pw"] = s["psi_pw"]
                row[f"{name}_max_psi"] = s["max_psi"]
                row[f"{name}_frac_within"] = s["frac_within_tolerance"]
            else:
                for k in ("accuracy_gap", "psi_pw", "max_psi", "frac_within"):
                    row[f"{name}_{k}"] = math.nan
        if self.method is not None and not dense:
            for k, v in self.method.log_dict().items():
                if k not in ("multiplier_sum", "multiplier_max", "active"):
                    row[f"method_{k}"] = v
        return row

    # -- the run ---------------------------------------------------------------------------

    def fit(self, *, resume: bool = False, stop_after_epoch: int | None = None, stop_at_step: int | None = None) -> list[dict[str, Any]]:
        """Run (or continue) training; returns :attr:`history`.

        ``resume``: continue from ``output_dir/last.ckpt`` if it exists, else from
        ``prev.ckpt`` (also when ``last.ckpt`` is unusable, with a warning naming it), else
        start fresh; :class:`CheckpointError` when checkpoints exist but none is usable.
        ``stop_after_epoch`` / ``stop_at_step``: stop early, as an interruption would (after
        the epoch's checkpoint / right after that global step, without saving); a later
        ``fit(resume=True)`` continues the same run.

        With ``output_dir``, first checks that it is writable and has room for checkpoints
        (:class:`OutputError` if not), locks it (:class:`FolderInUseError` naming the PID
        when another process trains in it) and removes temp files a killed run left there.
        """
        if self.output_dir is None or not self.is_main:
            return self._fit(resume, stop_after_epoch, stop_at_step)
        if not self._started:
            check_output_dir(self.output_dir, 3 * self._checkpoint_bytes())  # last, prev, temp
        # One process per run folder: a second would delete this one's temp files and
        # overwrite its checkpoints.
        with lock(self.output_dir / LOCK_NAME, what=f"run folder {self.output_dir}"):
            return self._fit(resume, stop_after_epoch, stop_at_step)

    def _fit(self, resume: bool, stop_after_epoch: int | None, stop_at_step: int | None) -> list[dict[str, Any]]:
        c = self.config
        if not self._started:
            if self.output_dir is not None and self.is_main:
                remove_temp_files(self.output_dir)
            if not (resume and self._resume()):
                _seed_everything(c.seed)
            self._started = True
        from tqdm.auto import tqdm

        bar = tqdm(range(self.epoch, c.total_epochs), desc="train", disable=not (c.progress and self.is_main))
        try:
            for epoch in bar:
                self._start_epoch(epoch)
                self._train_epoch(epoch, stop_at_step)
                row = self._end_epoch(epoch)
                self.history.append(row)
                self.epoch, self.batch, self._accum = epoch + 1, 0, self._zero_accum()
                if self.epoch == c.dense_epochs and self.method is None and c.sparse_epochs > 0:
                    self._compute_dense_stats()  # before any pruning, checkpointed with the epoch
                bar.set_postfix({k: row[k] for k in ("train_accuracy", "train_max_psi", "multiplier_sum") if k in row})
                self.write_history()
                self.save()
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self, row)
                if stop_after_epoch is not None and epoch >= stop_after_epoch:
                    break
        except _Stop:
            pass
        finally:
            bar.close()
        return self.history

    # -- files -----------------------------------------------------------------------------

    def write_history(self) -> None:
        """``history.json`` (one row per line, written a row at a time) and ``history.csv`` in
        ``output_dir`` (rank 0; atomic)."""
        out = self.output_dir
        if out is None or not self.is_main:
            return
        import pandas as pd

        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "history.json", _history_json(self.config.to_dict(), self.history))
        flat = [{k: v for k, v in row.items() if not isinstance(v, list)} for row in self.history]
        atomic_write(out / "history.csv", pd.DataFrame(flat).to_csv(index=False).encode())

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "global_step": self.global_step,
            "accum": dict(self._accum),
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "dense_optimizer": self.dense_optimizer.state_dict(),
            "dense_scheduler": self.dense_scheduler.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "method": self.method.state_dict() if self.method is not None else None,
            "dense_stats": self.dense_stats.state_dict() if self.dense_stats is not None else None,
            "dense_test_stats": self.dense_test_stats.state_dict() if self.dense_test_stats is not None else None,
            "history": [dict(r) for r in self.history],
            "rng": _rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = TrainConfig.from_dict(state["config"]).to_dict()
        now = self.config.to_dict()
        diff = sorted(k for k in now if now[k] != saved.get(k) and k not in TrainConfig.RESUMABLE_CHANGES)
        if diff:
            raise ValueError(
                "cannot resume: the checkpoint's config differs in "
                + ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {now[k]!r})" for k in diff)
            )
        self.model.load_state_dict(state["model"])
        self.dense_optimizer.load_state_dict(state["dense_optimizer"])
        self.dense_scheduler.load_state_dict(state["dense_scheduler"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.schedule.load_state_dict(state["schedule"])
        if state["dense_stats"] is not None:
            self.dense_stats = GroupStats.from_state_dict(state["dense_stats"])
        if state["dense_test_stats"] is not None:
            self.dense_test_stats = GroupStats.from_state_dict(state["dense_test_stats"])
        if state["method"] is not None:
            self.method = self._build_method()
            self.method.load_state_dict(state["method"])
        self.history = [dict(r) for r in state["history"]]
        self.epoch, self.batch, self.global_step = int(state["epoch"]), int(state["batch"]), int(state["global_step"])
        self._accum = dict(state["accum"])
        _set_rng_state(state["rng"])

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        """Checkpoint the run (rank 0) to ``path`` or ``output_dir/last.ckpt`` (the latter
        moving the previous ``last.ckpt`` to ``prev.ckpt``)."""
        try:
            if path is not None:
                return save_checkpoint(self.state_dict(), path) if self.is_main else None
            if self.checkpoint_path is None or not self.is_main:
                return None
            previous = self.previous_checkpoint_path if self._keep_previous else None
            saved = save_checkpoint(self.state_dict(), self.checkpoint_path, previous=previous)
            self._keep_previous = True
            global _LAST_SAVED
            _LAST_SAVED = (saved, self.epoch, self.global_step)
            return saved
        finally:
            if self.world_size > 1:  # no rank runs ahead of a checkpoint that is not on disk yet
                torch.distributed.barrier()

    def _resume(self) -> bool:
        """Load ``last.ckpt``, else ``prev.ckpt``; False if neither exists. A truncated or
        corrupted file is named in a warning and skipped; CheckpointError if none is usable."""
        errors = []
        for path in (self.checkpoint_path, self.previous_checkpoint_path):
            if path is None or not path.exists():
                continue
            try:
                state = load_checkpoint(path, map_location=self.device)
            except CheckpointError as err:
                warnings.warn(f"unusable checkpoint: {err}", RuntimeWarning, stacklevel=3)
                errors.append(str(err))
                continue
            if path == self.previous_checkpoint_path:
                why = "it is unusable" if errors else "it is missing (interrupted while being replaced)"
                warnings.warn(
                    f"resuming from the previous checkpoint {path} (step {state['global_step']}): "
                    f"{self.checkpoint_path.name} is not used as {why}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._keep_previous = False  # the next save overwrites last.ckpt, keeps this one
            self.load_state_dict(state)
            return True
        if errors:
            raise CheckpointError(
                f"no usable checkpoint in {self.output_dir} ({'; '.join(errors)}); delete the folder to start over"
            )
        return False

    def _checkpoint_bytes(self) -> int:
        """Rough size of one checkpoint: weights and masks, two momentum buffers, and 1 MiB."""
        weights = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        return 3 * weights + 2**20

    def load(self, path: str | os.PathLike | None = None) -> None:
        path = path if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: set TrainConfig.output_dir or pass path")
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
        self._started = True


class _IndexBatches:
    """The index batches of an epoch, made one at a time: batch ``b`` is ``order[b·B:(b+1)·B]``
    (``order`` a tensor of indices, or an int n for ``0..n-1``: then a ``slice``), from batch
    ``start`` on; with ``part=(rank, world)``, each batch's contiguous share of that rank."""

    def __init__(self, order: torch.Tensor | int, batch_size: int, start: int = 0, part: tuple[int, int] | None = None):
        self.order, self.batch_size, self.start, self.part = order, batch_size, start, part
        self.n = order if isinstance(order, int) else len(order)

    def __len__(self) -> int:
        return max(0, math.ceil(self.n / self.batch_size) - self.start)

    def __iter__(self) -> Iterator[torch.Tensor | slice]:
        for lo in range(self.start * self.batch_size, self.n, self.batch_size):
            hi = min(lo + self.batch_size, self.n)
            if self.part is not None:  # as tensor_split(world)[rank] of the batch
                rank, world = self.part
                q, r = divmod(hi - lo, world)
                lo, hi = lo + rank * q + min(rank, r), lo + (rank + 1) * q + min(rank + 1, r)
            yield slice(lo, hi) if isinstance(self.order, int) else self.order[lo:hi]


class _ListBatches:
    """A DataLoader ``batch_sampler`` over :class:`_IndexBatches`: index lists made lazily."""

    def __init__(self, batches: _IndexBatches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.batches:
            yield list(range(idx.start, idx.stop)) if isinstance(idx, slice) else idx.tolist()


def _history_json(config: dict[str, Any], history: Sequence[dict[str, Any]]) -> Iterator[bytes]:
    """``{"config": ..., "history": [...]}`` as JSON, one history row per line, encoded a row
    at a time (a row holds G multipliers: the text of the whole history is never built)."""
    yield b'{"config": ' + json.dumps(config, allow_nan=True).encode() + b',\n "history": ['
    for i, row in enumerate(history):
        yield (b"\n  " if i == 0 else b",\n  ") + json.dumps(row, allow_nan=True).encode()
    yield b"\n ]\n}"


def _nonfinite(
    loss: torch.Tensor, params: Sequence[torch.Tensor], multipliers: torch.Tensor | None = None, *, across_ranks: bool = True
) -> list[str]:
    """Which of the step's loss, ``multipliers`` and gradient norm (of ``params``' grads) are
    NaN / Inf: their names, [] when all are finite. One host synchronisation when all are."""
    values = {"loss": loss.detach().float().reshape(())}
    if multipliers is not None:
        values["multipliers"] = multipliers.detach().float().sum().to(loss.device)
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        values["gradients"] = torch.nn.utils.get_total_norm(grads).float().to(loss.device)
    total = sum(v * 0 for v in values.values())  # NaN iff some value is NaN / Inf
    if across_ranks and _dist()[1] > 1:  # every rank takes the same decision
        total = total.clone()
        torch.distributed.all_reduce(total)
    if math.isfinite(total):
        return []
    return [name for name, v in values.items() if not math.isfinite(v)] or ["values on another rank"]


def _listing(names: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]


def train(
    config: TrainConfig,
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset | None = None,
    *,
    dense_stats: GroupStats | None = None,
    resume: bool = False,
) -> Trainer:
    """Build a :class:`Trainer` and run it to the end; returns the trainer."""
    trainer = Trainer(config, model, train_set, test_set, dense_stats=dense_stats)
    trainer.fit(resume=resume)
    return trainer
