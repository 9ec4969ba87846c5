"""Per-group statistics of a model on a split: counts, correct predictions, summed loss."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ceag._progress import progress as progress_bar
from ceag.ops import GroupCrossEntropy, group_cross_entropy

# ---------------------------------------------------------------------------------------
# GroupStats
# ---------------------------------------------------------------------------------------


@dataclass
class GroupStats:
    """Per-group ``count`` [G] int64, ``correct`` [G] int64 and ``loss_sum`` [G] float64.

    Accumulate with :meth:`add_` (a :class:`ceag.ops.GroupCrossEntropy` or the three tensors)
    or combine with :meth:`merge` / ``+``. Tensors may live on any device while accumulating
    (no host synchronisation per batch); the derived quantities are computed where they are.
    """

    count: Tensor
    correct: Tensor
    loss_sum: Tensor

    def __post_init__(self) -> None:
        for name in ("count", "correct", "loss_sum"):
            t = getattr(self, name)
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 1:
                raise ValueError(f"{name} must be 1-D [num_groups], got shape {tuple(t.shape)}")
            if t.is_meta:
                raise ValueError(f"{name} is a meta tensor (no data)")
            if t.is_complex():
                raise TypeError(f"{name} must be real, got {t.dtype}")
            if name != "loss_sum" and t.is_floating_point():
                # Whole-valued floats (e.g. all-reduced counts) are fine; truncating 2.5 is not.
                bad = ~(torch.isfinite(t) & (t == t.round()))
                if bool(bad.any()):
                    raise ValueError(f"{name} must hold whole numbers, found {t[bad][0].item()}")
        g = self.count.shape[0]
        if g < 1:
            raise ValueError("count must have at least one group (num_groups >= 1), got shape (0,)")
        for name in ("correct", "loss_sum"):
            if getattr(self, name).shape[0] != g:
                raise ValueError(f"{name} must have length num_groups={g}, got {getattr(self, name).shape[0]}")
            if getattr(self, name).device != self.count.device:
                raise ValueError(f"{name} is on {getattr(self, name).device} but count is on {self.count.device}")
        self.count = self.count.to(torch.int64)
        self.correct = self.correct.to(torch.int64)
        self.loss_sum = self.loss_sum.to(torch.float64)
        bad = (self.correct > self.count) | (self.correct < 0) | (self.count < 0)
        if bool(bad.any()):
            g = int(bad.nonzero()[0, 0])
            raise ValueError(
                "correct must satisfy 0 <= correct <= count for every group, "
                f"got correct={int(self.correct[g])}, count={int(self.count[g])} for group {g}"
            )

    # -- construction ------------------------------------------------------------------

    @classmethod
    def zeros(cls, num_groups: int, device: torch.device | str | None = None) -> GroupStats:
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
        z = torch.zeros(num_groups, dtype=torch.int64, device=device)
        return cls(z, z.clone(), torch.zeros(num_groups, dtype=torch.float64, device=device))

    @classmethod
    def from_output(cls, out: GroupCrossEntropy) -> GroupStats:
        """Statistics of one batch from the fused op's output."""
        return cls(out.count.detach(), out.correct.detach(), out.loss_sum.detach())

    # -- accumulation ------------------------------------------------------------------

    @property
    def num_groups(self) -> int:
        return self.count.shape[0]

    @property
    def device(self) -> torch.device:
        return self.count.device

    def add_(self, out: GroupCrossEntropy | GroupStats | None = None, *, count=None, correct=None, loss_sum=None) -> GroupStats:
        """Add a batch's statistics in place (a fused-op output, a GroupStats, or tensors).

        Shapes are checked, values are not (that would synchronise with the device per batch).
        """
        if out is not None:
            count, correct, loss_sum = out.count, out.correct, out.loss_sum
        if count is None or correct is None or loss_sum is None:
            raise TypeError("add_ needs an op output / GroupStats, or count, correct and loss_sum")
        # Shapes only: the value checks of the constructor would synchronise with the device.
        for name, t in (("count", count), ("correct", correct), ("loss_sum", loss_sum)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.shape != self.count.shape:
                raise ValueError(f"{name} must have shape {tuple(self.count.shape)}, got {tuple(t.shape)}")
        self.count += count.detach().to(self.count.device, torch.int64)
        self.correct += correct.detach().to(self.count.device, torch.int64)
        self.loss_sum += loss_sum.detach().to(self.count.device, torch.float64)
        return self

    def merge(self, other: GroupStats) -> GroupStats:
        """A new GroupStats holding the sum of both (e.g. two shards of a split)."""
        if not isinstance(other, GroupStats):
            raise TypeError(f"other must be a GroupStats, got {type(other).__name__}")
        if other.num_groups != self.num_groups:
            raise ValueError(f"other has {other.num_groups} groups, expected {self.num_groups}")
        return self.clone().add_(other)

    __add__ = merge

    def clone(self) -> GroupStats:
        return GroupStats(self.count.clone(), self.correct.clone(), self.loss_sum.clone())

    def to(self, device: torch.device | str) -> GroupStats:
        return GroupStats(self.count.to(device), self.correct.to(device), self.loss_sum.to(device))

    def cpu(self) -> GroupStats:
        return self.to("cpu")

    # -- derived quantities ------------------------------------------------------------

    @property
    def total(self) -> int:
        return int(self.count.sum())

    @property
    def accuracy(self) -> Tensor:
        """A_g per group (float64), NaN where the group has no samples."""
        c = self.count.to(torch.float64)
        return torch.where(self.count > 0, self.correct.to(torch.float64) / c.clamp_min(1), torch.nan)

    @property
    def loss(self) -> Tensor:
        """Mean cross-entropy per group (float64), NaN where the group has no samples."""
        c = self.count.to(torch.float64)
        return torch.where(self.count > 0, self.loss_sum / c.clamp_min(1), torch.nan)

    @property
    def shares(self) -> Tensor:
        """p_g: each group's share of the samples (float64, sums to 1; zeros if empty)."""
        c = self.count.to(torch.float64)
        return c / c.sum().clamp_min(1)

    @property
    def overall_accuracy(self) -> float:
        """A: accuracy over all samples (sample-weighted), NaN when there are none."""
        n = self.total
        return float(self.correct.sum()) / n if n else math.nan

    @property
    def overall_loss(self) -> float:
        """Mean cross-entropy over all samples, NaN when there are none."""
        n = self.total
        return float(self.loss_sum.sum()) / n if n else math.nan

    # -- serialisation -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        return {"count": self.count.clone(), "correct": self.correct.clone(), "loss_sum": self.loss_sum.clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> GroupStats:
        missing = {"count", "correct", "loss_sum"} - set(state)
        if missing:
            raise KeyError(f"GroupStats state dict misses {sorted(missing)}")
        return cls(state["count"].clone(), state["correct"].clone(), state["loss_sum"].clone())

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        other = GroupStats.from_state_dict(state)
        if other.num_groups != self.num_groups:
            raise ValueError(f"state has {other.num_groups} groups, expected {self.num_groups}")
        self.count, self.correct, self.loss_sum = other.count, other.correct, other.loss_sum


# ---------------------------------------------------------------------------------------
# Streaming evaluation
# ---------------------------------------------------------------------------------------


def _unpack(batch: Any) -> tuple[Any, Tensor, Tensor]:
    if isinstance(batch, dict):
        return batch["inputs"], batch["target"], batch["group"]
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        raise ValueError("the loader must yield (inputs, target, group) batches")
    return batch[0], batch[1], batch[2]


def _move(x: Any, device: torch.device | None) -> Any:
    if device is None:
        return x
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (tuple, list)):
        return type(x)(_move(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _move(v, device) for k, v in x.items()}
    return x


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable,
    num_groups: int,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    backend: str | None = None,
) -> GroupStats:
    """Per-group count, correct and loss sum of ``model`` over ``loader`` (eval mode, no grad).

    ``loader`` yields ``(inputs, target, group)``; ``inputs`` may be a tensor or a tuple /
    dict of tensors (passed as ``model(*inputs)`` / ``model(**inputs)``). The model's
    training mode is restored afterwards. Statistics accumulate on the device and are
    returned on the CPU. ``device`` defaults to the device of the model's first parameter.
    """
    return _evaluate(
        model,
        loader,
        num_groups,
        device=device,
        progress=progress,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        backend=backend,
    ).stats


class Outcomes(NamedTuple):
    """A model's per-group statistics and its per-sample results, in the loader's order."""

    stats: GroupStats
    correct: Tensor  # [N] bool: classified right (False for ignored targets)
    group: Tensor  # [N] int64


@torch.no_grad()
def evaluate_samples(model: torch.nn.Module, loader: Iterable, num_groups: int, **kwargs: Any) -> Outcomes:
    """:func:`evaluate` (the same keyword arguments), also keeping which samples the model
    classified right, for :func:`paired_counts` against another model on the same samples."""
    return _evaluate(model, loader, num_groups, keep_samples=True, **kwargs)


def _evaluate(
    model: torch.nn.Module,
    loader: Iterable,
    num_groups: int,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    backend: str | None = None,
    keep_samples: bool = False,
) -> Outcomes:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    stats = GroupStats.zeros(num_groups, device=device)
    correct: list[Tensor] = []
    groups: list[Tensor] = []
    was_training = model.training
    model.eval()
    it = loader
    if progress:
        it = progress_bar(loader, desc="evaluate", leave=False)
    try:
        for batch in it:
            inputs, target, group = _move(_unpack(batch), device)
            if isinstance(inputs, dict):
                logits = model(**inputs)
            elif isinstance(inputs, (tuple, list)):
                logits = model(*inputs)
            else:
                logits = model(inputs)
            out = group_cross_entropy(
                logits,
                target,
                group,
                num_groups,
                label_smoothing=label_smoothing,
                ignore_index=ignore_index,
                backend=backend,
            )
            stats.add_(out)
            if keep_samples:
                correct.append(out.sample_correct.detach())
                groups.append(group.detach())
    finally:
        model.train(was_training)
    empty_bool, empty_long = torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.int64)
    return Outcomes(
        stats.cpu(),
        torch.cat(correct).cpu() if correct else empty_bool,
        torch.cat(groups).cpu().to(torch.int64) if groups else empty_long,
    )


def paired_counts(dense_correct: Tensor, sparse_correct: Tensor, group: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Per-group discordant counts of two models on the same samples: ``lost`` [G] (the dense
    model right, the sparse one wrong) and ``gained`` [G] (the reverse), int64.

    The inputs are [N] per-sample results in the same sample order (e.g. two
    :func:`evaluate_samples` over the same loader); :func:`ceag.metrics.disparity` turns
    them into the paired interval on ψ_g.
    """
    for name, t in (("dense_correct", dense_correct), ("sparse_correct", sparse_correct), ("group", group)):
        if not isinstance(t, Tensor) or t.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor")
    if not dense_correct.shape == sparse_correct.shape == group.shape:
        raise ValueError(
            "dense_correct, sparse_correct and group must have one entry per sample, got "
            f"{tuple(dense_correct.shape)}, {tuple(sparse_correct.shape)}, {tuple(group.shape)}: "
            "were both models evaluated on the same samples?"
        )
    d, s, g = dense_correct.bool().cpu(), sparse_correct.bool().cpu(), group.cpu().to(torch.int64)
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= num_groups):
        raise ValueError(f"group ids must be in [0, {num_groups})")
    lost = torch.bincount(g[d & ~s], minlength=num_groups)
    gained = torch.bincount(g[~d & s], minlength=num_groups)
    return lost, gained


def dense_reference(model: torch.nn.Module, train_loader: Iterable, num_groups: int, **kwargs: Any) -> GroupStats:
    """The dense model's train-set statistics, computed once before pruning (eval mode).

    These are CEAG's constants: A_g(θ_d), A(θ_d), L_g(θ_d), L(θ_d) and the group shares
    p_g. Use a loader over the *whole* train split without augmentation (the order does not
    matter). Keyword arguments go to :func:`evaluate`.
    """
    stats = evaluate(model, train_loader, num_groups, **kwargs)
    if stats.total == 0:
        raise ValueError("train_loader yielded no samples")
    return stats


# ---------------------------------------------------------------------------------------
# Confidence intervals
# ---------------------------------------------------------------------------------------
