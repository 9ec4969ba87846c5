"""The training loop: :class:`Trainer` runs the dense, pruning and mitigation phases of one
:class:`~ceag.train.config.TrainConfig` (see :mod:`ceag.train` for the whole picture)."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ceag._io import LOCK_NAME, check_output_dir, lock, remove_temp_files
from ceag._progress import progress
from ceag.methods import METHODS, ConstrainedMethod, Method, build_method
from ceag.metrics import DisparityReport, GroupStats, Outcomes, disparity, evaluate_samples, paired_counts
from ceag.nn import CompactLinear
from ceag.prune import GMPSchedule, apply_masks_, compact_, prunable_layers, sparsify, sparsity_report
from ceag.train.batching import batches, epoch_permutation
from ceag.train.checkpoint import (
    CHECKPOINT_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    load_checkpoint,
    load_resumable,
    record_saved,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from ceag.train.config import TrainConfig, milestones
from ceag.train.distributed import rank_and_world
from ceag.train.faults import NonFiniteError, UndoPoint, listing, nonfinite
from ceag.train.history import write_history


class _Stop(Exception):
    pass


#: The checkpoint entries that differ between the processes of a data-parallel run.
_RANK_KEYS = ("method", "accum", "rng")


class Trainer:
    """Runs a :class:`TrainConfig` on a model and data sets; see the module docstring.

    Args:
        config: the run's configuration.
        model: the classifier; its Linear / Conv2d layers are made masked with
            :func:`ceag.prune.sparsify` (first conv and last linear kept dense) unless it
            already has masked layers.
        train_set: map-style dataset of ``(inputs, target, group)`` samples.
        test_set: the same for evaluation (optional).
        val_set: held-out samples for the dual step (optional, the same layout): a method
            with replay buffers (ceag, ceag_paper, el_rb) then fills them from a batch of
            ``val_set`` per step (the model in eval mode, no gradient) instead of the training
            batch, against the dense model's accuracies on ``val_set``; ψ on it is logged
            as ``val_*`` each epoch. Keep these samples out of dense training too, or the
            dense reference is as inflated as on the training split.
        dense_stats: the dense model's train-set :class:`GroupStats`, if already known
            (otherwise computed from the model before pruning).

    After :meth:`fit`: :attr:`history` (one dict per epoch), :attr:`method`,
    :attr:`dense_stats` / :attr:`dense_test_stats`, the trained :attr:`model`, and
    :meth:`report` for a split's ψ_g with its intervals. The dense model's per-sample results
    are kept (and checkpointed), so every report on a split the trainer evaluated both models
    on uses the paired interval on ψ_g.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        train_set: Dataset,
        test_set: Dataset | None = None,
        *,
        val_set: Dataset | None = None,
        dense_stats: GroupStats | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config.validate()
        self.device = torch.device(config.device)
        self.rank, self.world_size = rank_and_world()
        if not prunable_layers(model):
            model = sparsify(model, storage=config.storage)
        if self.world_size > 1 and any(
            isinstance(m, CompactLinear) or getattr(m, "storage", "dense") != "dense" for _, m in prunable_layers(model)
        ):
            raise ValueError(
                "storage 'compact' / 'auto' resizes parameters when pruning, which DistributedDataParallel "
                "does not allow; use storage='dense' with several processes"
            )
        if not prunable_layers(model) and config.final_sparsity > 0:
            raise ValueError("the model has no Linear / Conv2d layer to prune")
        self.model = model.to(self.device)
        self.train_set = train_set
        self.test_set = test_set
        self.num_train = len(train_set)  # type: ignore[arg-type]
        if self.num_train == 0:
            raise ValueError("train_set is empty")
        self.val_set = val_set
        if val_set is not None:
            if len(val_set) == 0:  # type: ignore[arg-type]
                raise ValueError("val_set is empty (pass None for no held-out samples)")
            spec = METHODS[config.method]
            if spec.constrained and not spec.uses_buffers:
                raise ValueError(
                    f"val_set: method {config.method!r} has no replay buffers to fill with held-out samples; "
                    "use ceag, ceag_paper or el_rb, or no val_set"
                )
        self._val_order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation of val_set)

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
            self.dense_optimizer, milestones(config.lr_milestones, config.dense_epochs), config.lr_gamma
        )
        self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones(config.lr_milestones, config.sparse_epochs), config.lr_gamma
        )
        self.ddp: nn.Module | None = None
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model, device_ids=None if self.device.type == "cpu" else [self.device])

        self.dense_stats: GroupStats | None = dense_stats.cpu() if dense_stats is not None else None
        self.dense_test_stats: GroupStats | None = None
        self.dense_val_stats: GroupStats | None = None
        # split -> the dense model's per-sample results (None when dense_stats was given)
        self.dense_outcomes: dict[str, Outcomes] = {}
        self.method: Method | None = None
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # global epoch (dense then sparse) of the next batch
        self.batch = 0  # batches done within self.epoch
        self.global_step = 0
        self._accum = self._zero_accum()
        self._started = False
        self._keep_previous = True  # False after resuming from prev.ckpt: don't rotate a bad last.ckpt over it
        self.on_batch_end: Callable[[Trainer], None] | None = None  # test / user hook
        # Called after each epoch's history row is recorded and checkpointed, with that row.
        self.on_epoch_end: Callable[[Trainer, dict[str, Any]], None] | None = None
        # Wall-clock seconds and steps of the training loops per phase, this process only (not
        # checkpointed: timings are not part of the run's result).
        self.timings: dict[str, dict[str, float]] = {}
        # split -> the latest epoch's evaluation in this process (not checkpointed), so a
        # caller reporting on the final model need not evaluate it again.
        self._last_outcomes: dict[str, Outcomes] = {}

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
        """:func:`ceag.train.batching.batches`; with ``split``, this rank's slice of each."""
        part = (self.rank, self.world_size) if split and self.world_size > 1 else None
        return batches(dataset, order, batch_size, start, part, self.config.num_workers)

    def _eval_batches(self, dataset: Any) -> Iterable:
        if isinstance(dataset, (TensorDataset, Dataset)) and hasattr(dataset, "__len__"):
            # Every rank evaluates the whole split, in index order.
            return self._batches(dataset, None, self.config.eval_batch_size, split=False)
        return dataset  # any iterable of (inputs, target, group) batches

    #: split -> the attribute holding the dense model's statistics on it.
    _DENSE_STATS = {"train": "dense_stats", "test": "dense_test_stats", "val": "dense_val_stats"}

    def _splits(self) -> dict[str, tuple[Any, GroupStats | None]]:
        """name -> (dataset, the dense model's statistics on it) for every split held."""
        data = {"train": self.train_set, "test": self.test_set, "val": self.val_set}
        return {name: (data[name], getattr(self, attr)) for name, attr in self._DENSE_STATS.items() if data[name] is not None}

    @property
    def last_eval(self) -> dict[str, GroupStats]:
        """split -> statistics of the latest epoch's evaluation in this process."""
        return {name: out.stats for name, out in self._last_outcomes.items()}

    def _evaluate_split(self, name: str) -> Outcomes:
        dataset = self._splits()[name][0]
        out = evaluate_samples(self.model, self._eval_batches(dataset), self.config.num_groups, device=self.device)
        self._last_outcomes[name] = out
        return out

    def report(self, split: str = "test") -> DisparityReport:
        """ψ_g of the model as it is now on ``split`` ("train", "test" or "val") against the
        dense model, at the config's ε and ``min_count``. The interval is paired when the
        dense model's per-sample results on that split are known (the trainer computed the
        dense statistics itself) and the samples came in the same order; unpaired otherwise.
        Reuses this epoch's evaluation when there is one."""
        splits = self._splits()
        if split not in splits:
            raise ValueError(f"split must be one of {', '.join(splits)}, got {split!r}")
        ref = splits[split][1]
        if ref is None:
            raise ValueError(f"no dense statistics on {split!r} yet: the report needs a run that reached pruning")
        out = self._last_outcomes.get(split) or self._evaluate_split(split)
        return self._disparity(split, ref, out)

    def _disparity(self, split: str, ref: GroupStats, out: Outcomes) -> DisparityReport:
        c = self.config
        dense = self.dense_outcomes.get(split)
        if dense is None or not torch.equal(dense.group, out.group):
            return disparity(ref, out.stats, c.tolerance, min_count=c.min_count)
        lost, gained = paired_counts(dense.correct, out.correct, out.group, c.num_groups)
        return disparity(ref, out.stats, c.tolerance, min_count=c.min_count, lost=lost, gained=gained)

    # -- set-up ----------------------------------------------------------------------------

    def _build_method(self) -> Method:
        assert self.dense_stats is not None
        kwargs = self.config.method_kwargs(self.config.steps_per_epoch(self.num_train))
        spec = METHODS[self.config.method]
        if spec.constrained and self.config.constrained_min_count > 0:
            kwargs["constrained"] = self.dense_stats.count >= self.config.constrained_min_count
        dense = self.dense_stats
        if self.val_set is not None and spec.uses_buffers:
            assert self.dense_val_stats is not None
            kwargs["held_out"] = True
            dense = self.dense_val_stats
        return build_method(self.config.method, self.config.num_groups, dense=dense, device=self.device, **kwargs)

    def _compute_dense_stats(self) -> None:
        """The dense model's statistics (and per-sample results) on every split, before pruning."""
        for name, (dataset, known) in self._splits().items():
            if known is not None:
                continue
            out = evaluate_samples(self.model, self._eval_batches(dataset), self.config.num_groups, device=self.device)
            if name != "test" and out.stats.total == 0:
                raise ValueError(f"the {name} split yielded no samples")
            setattr(self, self._DENSE_STATS[name], out.stats)
            self.dense_outcomes[name] = out
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
        num_batches = c.steps_per_epoch(self.num_train)
        module = self._train_module()
        module.train()
        bar = progress(
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
            undo = UndoPoint(None if dense else self.method, self.device, self._running_stats)
            if not dense and getattr(self.method, "held_out", False):
                self._observe_held_out(epoch, self.batch)
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
            bad = nonfinite(loss, self._params, lam)
            if bad:
                what = listing(bad)
                undo.restore()
                optimizer.zero_grad(set_to_none=True)
                where = (
                    f"epoch {epoch} ({self.phase(epoch)}), step {self.global_step + 1} (batch {self.batch + 1} of {num_batches})"
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
                # No apply_masks_ per step: pruned weights get zero gradients and zeroed optimizer
                # state at each pruning, so SGD keeps them at exactly 0 (tests/prune); the 0.4 ms
                # re-masking of adult's MLP cost 6% of a step. _end_epoch re-masks once.
                optimizer.step()
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

    def _observe_held_out(self, epoch: int, batch: int) -> None:
        """Feed the method's buffers one batch of ``val_set``: batch ``batch`` of epoch ``epoch``
        cycles through a per-epoch permutation (a function of seed, epoch and batch, so a
        resumed run sees the same samples); this rank's slice of it; model in eval mode."""
        assert self.val_set is not None and self.method is not None
        n = len(self.val_set)  # type: ignore[arg-type]
        if self._val_order is None or self._val_order[0] != epoch:
            self._val_order = (epoch, epoch_permutation(n, self.config.seed + 1, epoch))
        size = min(self.config.batch_size, n)
        idx = self._val_order[1][(batch * size + torch.arange(size)) % n]
        part = (self.rank, self.world_size) if self.world_size > 1 else None
        inputs, target, group = next(iter(batches(self.val_set, idx, size, part=part)))
        inputs, target, group = (t.to(self.device, non_blocking=True) for t in (inputs, target, group))
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            logits = self.model(inputs)
        self.model.train(was_training)
        self.method.observe(logits, target, group)  # type: ignore[union-attr]

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        c = self.config
        apply_masks_(self.model)  # insurance, once an epoch, before the model is evaluated and saved
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
        wanted = {"train": c.eval_train, "test": c.eval_test, "val": True}
        self._last_outcomes = {}
        for name, (_, ref) in self._splits().items():
            if not wanted[name]:
                continue
            out = self._evaluate_split(name)
            stats = out.stats
            row[f"{name}_accuracy"] = stats.overall_accuracy
            row[f"{name}_loss"] = stats.overall_loss
            if ref is not None and not dense:
                s = self._disparity(name, ref, out).summary()
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

    def fit(
        self, *, resume: bool = False, stop_after_epoch: int | None = None, stop_at_step: int | None = None
    ) -> list[dict[str, Any]]:
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
                seed_everything(c.seed)
            self._started = True
        bar = progress(range(self.epoch, c.total_epochs), desc="train", disable=not (c.progress and self.is_main))
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
        """``history.json`` and ``history.csv`` in ``output_dir`` (rank 0; atomic)."""
        if self.output_dir is not None and self.is_main:
            write_history(self.output_dir, self.config.to_dict(), self.history)

    def state_dict(self) -> dict[str, Any]:
        return {**self._shared_state(), **self._rank_state()}

    def _shared_state(self) -> dict[str, Any]:
        """The state every process of a data-parallel run holds alike (:meth:`_rank_state`: the rest)."""
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "global_step": self.global_step,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "dense_optimizer": self.dense_optimizer.state_dict(),
            "dense_scheduler": self.dense_scheduler.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "dense_stats": self.dense_stats.state_dict() if self.dense_stats is not None else None,
            "dense_test_stats": self.dense_test_stats.state_dict() if self.dense_test_stats is not None else None,
            "dense_val_stats": self.dense_val_stats.state_dict() if self.dense_val_stats is not None else None,
            "dense_outcomes": {
                k: {"correct": v.correct.clone(), "group": v.group.clone()} for k, v in self.dense_outcomes.items()
            },
            "history": [dict(r) for r in self.history],
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
        # Layers the saved run had turned compact ("auto" storage) are compact before loading.
        compact_(self.model, (k.rsplit(".", 1)[0] for k in state["model"] if k.endswith(".row_ptr")))
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
        if state.get("dense_val_stats") is not None:
            self.dense_val_stats = GroupStats.from_state_dict(state["dense_val_stats"])
        # Checkpoints from before per-sample results were kept have none: reports are unpaired.
        self.dense_outcomes = {
            k: Outcomes(getattr(self, self._DENSE_STATS[k]), v["correct"].bool(), v["group"].long())
            for k, v in (state.get("dense_outcomes") or {}).items()
            if getattr(self, self._DENSE_STATS.get(k, ""), None) is not None
        }
        if (self.val_set is not None) != (self.dense_val_stats is not None) and state["method"] is not None:
            raise ValueError(
                "cannot resume: the checkpoint was "
                + ("made without" if self.val_set is not None else "made with")
                + " a val_set (held-out samples for the dual step); resume it the way it was started"
            )
        if state["method"] is not None:
            self.method = self._build_method()
        self.history = [dict(r) for r in state["history"]]
        self.epoch, self.batch, self.global_step = int(state["epoch"]), int(state["batch"]), int(state["global_step"])
        own = self._own_rank_state(state)
        if own["method"] is not None:
            self.method.load_state_dict(own["method"])
        self._accum = dict(own["accum"])
        set_rng_state(own["rng"])

    def _own_rank_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """This process's part of a checkpoint: its entry of ``"ranks"`` when several wrote it."""
        ranks = state.get("ranks")
        if ranks is None:
            if self.world_size > 1 and state["method"] is not None and state["method"].get("buffer") is not None:
                raise ValueError(
                    "cannot resume: the checkpoint holds one process's replay buffers (written by one process, or by "
                    f"an older ceag), and each of the {self.world_size} processes keeps its own; "
                    "resume it with one process, or start the run again"
                )
            return {k: state[k] for k in _RANK_KEYS}
        if len(ranks) != self.world_size:
            raise ValueError(
                f"cannot resume: the checkpoint was written by {len(ranks)} processes, this job has {self.world_size}; "
                f"resume it with --nproc_per_node {len(ranks)}"
            )
        return ranks[self.rank]

    def _rank_state(self) -> dict[str, Any]:
        """What differs between the processes of a data-parallel run (:data:`_RANK_KEYS`): each
        rank's replay buffers (filled from its own slice of every batch), epoch sums and RNG."""
        return {
            "method": self.method.state_dict() if self.method is not None else None,
            "accum": dict(self._accum),
            "rng": rng_state(),
        }

    def _checkpoint_state(self) -> dict[str, Any] | None:
        """The state to save, on rank 0 (None elsewhere); with several processes it holds
        every rank's :meth:`_rank_state` under ``"ranks"`` (a collective: every rank calls it)."""
        mine = self._rank_state()
        ranks = None
        if self.world_size > 1:
            ranks = [None] * self.world_size
            torch.distributed.all_gather_object(ranks, mine)
        if not self.is_main:
            return None
        state = {**self._shared_state(), **mine}
        if ranks is not None:
            state["ranks"] = ranks
        return state

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        """Checkpoint the run (rank 0 writes; every rank's own state is in it) to ``path``
        or ``output_dir/last.ckpt`` (the latter moving the previous ``last.ckpt`` to ``prev.ckpt``)."""
        try:
            if path is None and self.checkpoint_path is None:
                return None
            state = self._checkpoint_state()
            if state is None:
                return None
            if path is not None:
                return save_checkpoint(state, path)
            previous = self.previous_checkpoint_path if self._keep_previous else None
            saved = save_checkpoint(state, self.checkpoint_path, previous=previous)
            self._keep_previous = True
            record_saved(saved, self.epoch, self.global_step)
            return saved
        finally:
            if self.world_size > 1:  # no rank runs ahead of a checkpoint that is not on disk yet
                torch.distributed.barrier()

    def _resume(self) -> bool:
        """Load ``last.ckpt``, else ``prev.ckpt`` (:func:`ceag.train.checkpoint.load_resumable`);
        False if neither exists."""
        found = load_resumable(self.checkpoint_path, self.previous_checkpoint_path, self.device)
        if found is None:
            return False
        state, from_previous = found
        if from_previous:
            self._keep_previous = False  # the next save overwrites last.ckpt, keeps this one
        self.load_state_dict(state)
        return True

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


def train(
    config: TrainConfig,
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset | None = None,
    *,
    val_set: Dataset | None = None,
    dense_stats: GroupStats | None = None,
    resume: bool = False,
) -> Trainer:
    """Build a :class:`Trainer` and run it to the end; returns the trainer."""
    trainer = Trainer(config, model, train_set, test_set, val_set=val_set, dense_stats=dense_stats)
    trainer.fit(resume=resume)
    return trainer
