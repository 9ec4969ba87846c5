"""CEAG: constrained excess accuracy gaps, ψ_g ≤ ε per group, with or without replay buffers."""

from __future__ import annotations

import math
from typing import Any

import torch

from ceag.methods.base import PRIMALS, _to_float
from ceag.methods.buffers import BufferEstimate, estimate_overall
from ceag.methods.constrained import ConstrainedMethod
from ceag.metrics import GroupStats

__all__ = ["CEAG", "GROUP_SLACKS", "MULTIPLIER_SCALES", "PAPER_FORMULATION"]


#: How CEAG's multipliers enter the primal: λ_g as is ("absolute", the paper), or times the
#: group's share of the batch ("share": w_g = (1 + λ_g)/N before normalisation).
MULTIPLIER_SCALES = ("absolute", "share")
#: Per-group additions to the dual target by the group's size (CEAG's ``group_slack``).
GROUP_SLACKS = ("none", "se", "sample")
#: The paper's choices where CEAG's defaults depart from it (docs/method.md): method "ceag_paper".
PAPER_FORMULATION = {"primal": "paper", "multiplier_scale": "absolute", "dual_optimizer": "sgd", "margin": 0.0}


class CEAG(ConstrainedMethod):
    """Constrained excess accuracy gaps: ψ_g ≤ ε for every group (ALGORITHM.md).

    Args:
        num_groups: G.
        dense: the dense model's *train-set* :class:`~ceag.metrics.GroupStats` (from
            :func:`ceag.metrics.dense_reference`): accuracies, losses and group shares p_g.
        tolerance: ε (default 0.01).
        buffer_size: k (default 40), or None for CEAG without replay buffers (the dual step
            then uses the mini-batch accuracies of the groups in the batch).
        primal: the primal objective (:func:`~ceag.methods.primal_group_weights`). Default
            "positive": the paper's surrogate with a stop-gradient on its average-loss term,
            so no sample weight turns negative once Σλ > 1 (docs/method.md); "paper" is the
            paper's Lagrangian gradient.
        multiplier_scale: "absolute" (default, the paper: c_g = λ_g) or "share" (c_g =
            λ_g n_g/N, λ_g a relative up-weighting; measured weaker, docs/method.md).
        margin: the fraction of ε the dual step keeps in reserve: it enforces ψ̂_g ≤ (1 −
            margin) ε (default 1: ψ̂_g ≤ 0; 0: the paper's ψ̂_g ≤ ε). Dual ascent settles the active groups *at*
            its target, and their final ψ_g scatters around it, so a target of ε leaves about
            half of them above ε (docs/method.md).
        group_slack: raise group g's target by ``slack_scale`` times a unit set by its size
            (measured, not the default: docs/method.md, section 5): "none" (default: one
            target for every group); "se", the standard error √(A_g(1 − A_g) / n_g) of its
            dense accuracy on its n_g training samples; "sample", 1 / n_g, one sample of the
            group (its accuracy moves in steps of 1 / n_g, so a target below that is met only
            by overshooting). Either way the dual stops chasing what the group's size cannot
            resolve.
        slack_scale: κ >= 0, the multiple of the unit (default 1).
        Other keywords: see :class:`ConstrainedMethod`.

    Dual violation with buffers: Â_g = buffer mean, available when the buffer is full and
    the group has dense samples; Â = Σ p_g Â_g / Σ p_g and Â^d = Σ p_g A_g(θ_d) / Σ p_g over
    the *same* available groups (Â^d = A(θ_d) once every group is available; restricting it
    keeps ψ̂ unbiased while some buffers are still filling, or never fill); ψ̂_g = (A_g(θ_d) −
    Â_g) − (Â^d − Â). Without buffers: A_g,B and A_B of the batch, the dense reference on
    the same group mix Σ n_g A_g(θ_d) / N.
    """

    name = "ceag"

    def __init__(
        self,
        num_groups: int,
        dense: GroupStats,
        *,
        tolerance: float = 0.01,
        buffer_size: int | None = 40,
        primal: str = "positive",
        multiplier_scale: str = "absolute",
        margin: float = 1.0,
        group_slack: str = "none",
        slack_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if primal not in PRIMALS:
            raise ValueError(f"primal must be one of {', '.join(PRIMALS)}; got {primal!r}")
        if multiplier_scale not in MULTIPLIER_SCALES:
            raise ValueError(f"multiplier_scale must be one of {', '.join(MULTIPLIER_SCALES)}; got {multiplier_scale!r}")
        self.primal = primal
        self.multiplier_scale = multiplier_scale
        margin = _to_float("margin", margin)
        if not 0.0 <= margin <= 1.0:
            raise ValueError(f"margin must be in [0, 1], got {margin}")
        self.margin = margin
        if group_slack not in GROUP_SLACKS:
            raise ValueError(f"group_slack must be one of {', '.join(GROUP_SLACKS)}; got {group_slack!r}")
        self.group_slack = group_slack
        slack_scale = _to_float("slack_scale", slack_scale)
        if not (math.isfinite(slack_scale) and slack_scale >= 0):
            raise ValueError(f"slack_scale must be a finite number >= 0, got {slack_scale}")
        self.slack_scale = slack_scale
        if not isinstance(dense, GroupStats):
            raise TypeError(f"dense must be a ceag.metrics.GroupStats, got {type(dense).__name__}")
        if dense.num_groups != num_groups:
            raise ValueError(f"dense has {dense.num_groups} groups, expected num_groups={num_groups}")
        if dense.total == 0:
            raise ValueError("dense has no samples")
        super().__init__(num_groups, tolerance=tolerance, buffer_size=buffer_size, **kwargs)
        self.dense = dense.cpu()
        self._move_constants(self.device)

    @property
    def dual_target(self) -> float:
        """The bound the dual step enforces on ψ̂_g: (1 − margin) ε; with ``group_slack`` each
        group's adds κ times its size unit."""
        return (1.0 - self.margin) * self.tolerance

    def _move_constants(self, device: torch.device) -> None:
        d = self.dense
        self._dense_known = (d.count > 0).to(device)
        self._dense_acc = torch.nan_to_num(d.accuracy, nan=0.0).to(device)
        self._dense_loss = torch.nan_to_num(d.loss, nan=0.0).to(device)
        self._dense_overall_loss = torch.tensor(d.overall_loss, dtype=torch.float64).to(device)
        self._shares = d.shares.to(device)
        n = d.count.clamp_min(1).to(self._dense_acc.dtype)
        unit = {
            "none": torch.zeros_like(n),
            "se": torch.sqrt(self._dense_acc * (1 - self._dense_acc) / n),
            "sample": 1.0 / n,
        }[self.group_slack]
        self._targets = (self.dual_target + self.slack_scale * unit).to(device)

    def _buffer_values(self, out, logits, target):
        return out.sample_correct

    def estimates(self) -> BufferEstimate:
        if not self.uses_buffers:
            raise RuntimeError("CEAG built with buffer_size=None has no replay buffers")
        sums, fills = self._buffer_sums()
        k = self.buffer_size * self._world_size()
        available = (fills >= k) & self._dense_known
        acc = torch.where(available, sums / k, torch.nan)
        overall = estimate_overall(acc, available, self._shares)
        dense_overall = estimate_overall(self._dense_acc, available, self._shares)
        psi = (self._dense_acc - acc) - (dense_overall - overall)
        return BufferEstimate(acc, available, overall, torch.where(available, psi, torch.nan))

    def _buffer_violation(self, est):
        return est.constraint - self._targets

    def _batch_violation(self, out):
        stats = self._all_reduce(torch.stack([out.correct.to(torch.float64), out.count.to(torch.float64)]))
        correct, count = stats[0], stats[1]
        observed = (count > 0) & self._dense_known
        acc = correct / count.clamp_min(1)
        n = count.sum().clamp_min(1)
        overall = correct.sum() / n
        dense_overall = (count * self._dense_acc).sum() / n
        psi = (self._dense_acc - acc) - (dense_overall - overall)
        return psi - self._targets, observed

    def _primal_coefficients(self, out, lam):
        if self.multiplier_scale == "absolute":
            return lam
        # "share": c_g = λ_g n_g / N, so w_g = (1 + λ_g)/N: λ_g is group g's relative up-weighting.
        cnt = out.count.to(lam.dtype)
        return lam * cnt / cnt.sum().clamp_min(1)

    def _surrogate(self, out):
        """ψ̃_g = [L_g,B − L_g(θ_d)] − [L_B − L(θ_d)] for groups in the batch."""
        loss_sum = out.loss_sum.detach().to(torch.float64)
        cnt = out.count.to(torch.float64)
        lb = loss_sum.sum() / cnt.sum().clamp_min(1)
        lg = loss_sum / cnt.clamp_min(1)
        s = (lg - self._dense_loss) - (lb - self._dense_overall_loss)
        return torch.where(out.count > 0, s, torch.nan)
