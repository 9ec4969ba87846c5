"""EL and EL+RB: equalized loss constraints on L_g − L, from mini-batches or replay buffers."""

from __future__ import annotations

from typing import Any

import cooper
import torch
from torch import Tensor

from ceag.methods.base import _check_int, _to_float
from ceag.methods.buffers import BufferEstimate, estimate_overall
from ceag.methods.constrained import ConstrainedMethod
from ceag.ops._checks import check_tensor

__all__ = ["EL", "ELRB"]


class EL(ConstrainedMethod):
    """Equalized loss (Tran et al. 2022): L_g − L per group, multipliers from mini-batches.

    ``variant="abs"`` (default, as in the paper's released code): inequality constraints
    |L_g − L| ≤ ε with λ ≥ 0; the primal surrogate |L_g,B − L_B| has subgradient
    sign(L_g,B − L_B) (c_g = λ_g·sign). ``variant="signed"``: equality constraints
    L_g − L = 0 with free-sign multipliers (``tolerance`` must be 0).

    With ``buffer_size`` (see :class:`ELRB`) the dual step uses replay buffers of per-sample
    losses: L̂_g = buffer mean (available when full), L̂ = Σ p_g L̂_g / Σ p_g over available
    groups; then ``group_shares`` (p_g, e.g. ``dense.shares``) is required.
    """

    name = "el"
    buffer_dtype = torch.float32

    def __init__(
        self,
        num_groups: int,
        *,
        variant: str = "abs",
        tolerance: float = 0.0,
        buffer_size: int | None = None,
        group_shares: Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        _check_int("num_groups", num_groups, 1)
        if buffer_size is not None:
            _check_int("buffer_size", buffer_size, 1)
        if variant not in ("abs", "signed"):
            raise ValueError(f"variant must be 'abs' or 'signed', got {variant!r}")
        if variant == "signed" and _to_float("tolerance", tolerance) != 0.0:
            raise ValueError(f"tolerance must be 0 for the signed (equality) variant, got {tolerance}")
        self.variant = variant
        self.constraint_type = cooper.ConstraintType.INEQUALITY if variant == "abs" else cooper.ConstraintType.EQUALITY
        if buffer_size is not None:
            if group_shares is None:
                raise ValueError("group_shares (p_g, e.g. dense_stats.shares) is required with buffer_size")
            check_tensor("group_shares", group_shares, dim=1)
            if group_shares.shape[0] != num_groups:
                raise ValueError(f"group_shares must have length num_groups={num_groups}, got {group_shares.shape[0]}")
            if (
                bool((group_shares < 0).any())
                or not bool(torch.isfinite(group_shares).all())
                or not float(group_shares.sum()) > 0
            ):
                raise ValueError("group_shares must be >= 0 with a positive sum")
        super().__init__(num_groups, tolerance=tolerance, buffer_size=buffer_size, **kwargs)
        self._shares = None if group_shares is None else group_shares.detach().to(self.device, torch.float64)

    def _move_constants(self, device):
        if getattr(self, "_shares", None) is not None:
            self._shares = self._shares.to(device)

    def _constraint_of(self, diff: Tensor) -> Tensor:
        return diff.abs() if self.variant == "abs" else diff

    def _buffer_values(self, out, logits, target):
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(
                logits.detach().float(),
                target,
                reduction="none",
                ignore_index=self.ignore_index,
                label_smoothing=self.label_smoothing,
            )

    def estimates(self) -> BufferEstimate:
        if not self.uses_buffers:
            raise RuntimeError("EL without buffer_size has no replay buffers")
        sums, fills = self._buffer_sums()
        k = self.buffer_size * self._world_size()
        available = fills >= k
        loss = torch.where(available, sums / k, torch.nan)
        overall = estimate_overall(loss, available, self._shares)
        return BufferEstimate(loss, available, overall, torch.where(available, self._constraint_of(loss - overall), torch.nan))

    def _buffer_violation(self, est):
        return est.constraint - self.tolerance

    def _batch_violation(self, out):
        stats = self._all_reduce(torch.stack([out.loss_sum.detach().to(torch.float64), out.count.to(torch.float64)]))
        loss_sum, count = stats[0], stats[1]
        observed = count > 0
        diff = loss_sum / count.clamp_min(1) - loss_sum.sum() / count.sum().clamp_min(1)
        return self._constraint_of(diff) - self.tolerance, observed

    def _batch_diff(self, out) -> Tensor:
        loss_sum = out.loss_sum.detach().to(torch.float64)
        cnt = out.count.to(torch.float64)
        return loss_sum / cnt.clamp_min(1) - loss_sum.sum() / cnt.sum().clamp_min(1)

    def _primal_coefficients(self, out, lam):
        if self.variant == "signed":
            return lam
        return lam * torch.sign(self._batch_diff(out)).to(lam.dtype)

    def _surrogate(self, out):
        return torch.where(out.count > 0, self._constraint_of(self._batch_diff(out)), torch.nan)


class ELRB(EL):
    """EL whose dual step uses replay buffers of per-sample losses (k = 40 by default)."""

    name = "el_rb"

    def __init__(self, num_groups: int, group_shares: Tensor, *, buffer_size: int = 40, **kwargs: Any) -> None:
        super().__init__(num_groups, buffer_size=buffer_size, group_shares=group_shares, **kwargs)
