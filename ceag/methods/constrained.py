"""ConstrainedMethod: one Lagrange multiplier per group, the dual-first step, replay buffers.

Subclasses (:class:`~ceag.methods.CEAG`, :class:`~ceag.methods.EL`) say what the buffers hold
and how a violation and the primal coefficients c_g follow from the batch or the buffers;
this class runs the step in the order of the package docstring, the dual update
(:mod:`ceag.methods.dual`), the buffers' bookkeeping and the state dict.
"""

from __future__ import annotations

import abc
import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import cooper
import torch
from cooper.multipliers import IndexedMultiplier
from torch import Tensor

from ceag.methods.base import Method, StepOutput, _check_int, _check_nonneg, _to_float, primal_group_weights
from ceag.methods.buffers import BufferEstimate, use_incremental_sums
from ceag.methods.dual import PI, _is_stateless_sgd, _make_dual_optimizer
from ceag.methods.problem import GroupConstraintProblem
from ceag.ops import GroupCrossEntropy, replay_buffer_update

__all__ = ["ConstrainedMethod"]


def _copied(obj: Any) -> Any:
    """A copy of a state dict that shares nothing mutable: tensors cloned, containers rebuilt,
    anything else deep-copied (5x faster than ``copy.deepcopy`` here, which a step's undo
    point pays every step)."""
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _copied(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copied(v) for v in obj)
    return copy.deepcopy(obj)


class ConstrainedMethod(Method):
    """A method with one Lagrange multiplier per group (Cooper), optional replay buffers.

    Args:
        num_groups: G.
        tolerance: ε >= 0 of the constraints.
        dual_lr: η_λ > 0 (default 1e-3; the paper used 1e-4 to 1e-2).
        dual_optimizer: "sgd" (default, no momentum), "pi" (:class:`PI`, a dense PI controller;
            its gains go in ``dual_optimizer_kwargs``, e.g. ``{"Kp": 2.0, "Ki": 1.0}``), "nupi"
            (Cooper's nuPI, the same update through sparse gradients) or a callable
            ``(params, lr=..., **kwargs) -> Optimizer`` built with ``maximize=True``.
        buffer_size: k >= 1 entries per group's replay buffer; None for mini-batch estimates.
        active: whether constraints act from the start (toggle :attr:`active` when the GMP
            schedule ends; while inactive the step is NFT's, buffers still fill).
        max_multiplier_sum: if given, λ is rescaled after each dual step so Σ_g λ_g ≤ it.
        constrained: bool [G], the groups whose constraint is enforced (None: all); the
            others keep λ_g = 0. Use it to leave out groups too small to estimate (a group of
            10 samples moves ψ_g by 10 points per sample, and its multiplier grows unchecked).
        multiplier_sum_warning: warn when Σ_g |λ_g| reaches this (None: never); only with the
            paper's primal objective, whose average-loss weight turns negative at Σλ = 1.
        dual_decay: ρ >= 0, resilient constraints (Hounie et al., NeurIPS 2023): the dual step
            ascends ψ̂_g − target − ρ λ_g, the gradient of a quadratic cost ρ u²/2 on relaxing
            the constraint by u, so where ε cannot be met λ_g settles near violation / ρ
            instead of growing without bound (default 0: the paper's dual).
        held_out: the replay buffers hold held-out samples, fed by :meth:`observe`, and
            :meth:`step` leaves them alone: the dual step then measures the violation on data
            the primal step does not fit (Cotter et al., ICML 2019, "two datasets"). Needs
            buffers; the dense reference must then be measured on the same held-out samples.
        process_group: with torch.distributed initialised, the statistics behind the dual
            step (buffer sums and fills, or batch loss sums / counts) are all-reduced over
            this group (None: the default group) so every rank takes the same dual step;
            pass ``distributed=False`` to keep every rank local.
    """

    constraint_type = cooper.ConstraintType.INEQUALITY
    buffer_dtype = torch.bool
    #: The primal objective (:func:`primal_group_weights`); CEAG lets the user choose it.
    primal = "paper"

    def __init__(
        self,
        num_groups: int,
        *,
        tolerance: float = 0.0,
        dual_lr: float = 1e-3,
        dual_optimizer: str | Callable[..., torch.optim.Optimizer] = "sgd",
        dual_optimizer_kwargs: dict | None = None,
        buffer_size: int | None = None,
        active: bool = True,
        max_multiplier_sum: float | None = None,
        constrained: Tensor | None = None,
        multiplier_sum_warning: float | None = 0.8,
        dual_decay: float = 0.0,
        held_out: bool = False,
        distributed: bool = True,
        process_group: Any = None,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        backend: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(num_groups, label_smoothing=label_smoothing, ignore_index=ignore_index, backend=backend, device=device)
        self.tolerance = _check_nonneg("tolerance", tolerance)
        dual_lr = _to_float("dual_lr", dual_lr)
        if not (dual_lr > 0 and math.isfinite(dual_lr)):
            raise ValueError(f"dual_lr must be a finite number > 0, got {dual_lr}")
        self.dual_lr = dual_lr
        if buffer_size is not None:
            _check_int("buffer_size", buffer_size, 1)
        self.buffer_size = buffer_size
        if held_out and buffer_size is None:
            raise ValueError("held_out=True needs replay buffers (buffer_size): they hold the held-out samples")
        self.held_out = bool(held_out)
        self.dual_decay = _check_nonneg("dual_decay", dual_decay)
        if max_multiplier_sum is not None:
            max_multiplier_sum = _to_float("max_multiplier_sum", max_multiplier_sum)
            if not max_multiplier_sum > 0:
                raise ValueError(f"max_multiplier_sum must be > 0, got {max_multiplier_sum}")
        self.max_multiplier_sum = max_multiplier_sum
        if constrained is not None:
            if not isinstance(constrained, Tensor) or constrained.dtype != torch.bool or constrained.shape != (num_groups,):
                got = (
                    f"{tuple(constrained.shape)} {constrained.dtype}"
                    if isinstance(constrained, Tensor)
                    else type(constrained).__name__
                )
                raise ValueError(f"constrained must be a bool tensor of shape ({num_groups},), got {got}")
            constrained = constrained.to(self.device)
        self.constrained = constrained
        if multiplier_sum_warning is not None:
            multiplier_sum_warning = _check_nonneg("multiplier_sum_warning", multiplier_sum_warning)
        self.multiplier_sum_warning = multiplier_sum_warning
        self._warned = False
        self._active = bool(active)
        self.distributed = bool(distributed)
        self.process_group = process_group

        self.cmp = GroupConstraintProblem(num_groups, self.constraint_type, self.device)
        self._dual_optimizer_spec = (dual_optimizer, dict(dual_optimizer_kwargs or {}))
        self.dual_optimizer = _make_dual_optimizer(
            dual_optimizer, list(self.cmp.dual_parameters()), self.dual_lr, dict(dual_optimizer_kwargs or {})
        )
        if buffer_size is not None:
            self.buffer = torch.zeros(num_groups, buffer_size, dtype=self.buffer_dtype, device=self.device)
            self.head = torch.zeros(num_groups, dtype=torch.int64, device=self.device)
            self.fill = torch.zeros(num_groups, dtype=torch.int64, device=self.device)
        else:
            self.buffer = self.head = self.fill = None
        # Per-group buffer sums, kept up to date for the groups each step touches (a full float64
        # sum of the G x k buffer per step costs O(G k)); recomputed in full whenever the buffer
        # changed behind our back (its version counter moved: load_state_dict, a direct write).
        self._sums: Tensor | None = None
        self._sums_version = -1

    # -- properties ----------------------------------------------------------------------

    @property
    def constraint(self) -> cooper.Constraint:
        return self.cmp.group

    @property
    def multiplier(self) -> IndexedMultiplier:
        return self.cmp.group.multiplier

    @property
    def multipliers(self) -> Tensor:
        return self.multiplier.weight.detach().view(-1).clone()

    @property
    def active(self) -> bool:
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        self._active = bool(value)

    @property
    def uses_buffers(self) -> bool:
        return self.buffer is not None

    # -- subclass hooks ------------------------------------------------------------------

    @abc.abstractmethod
    def _buffer_values(self, out: GroupCrossEntropy, logits: Tensor, target: Tensor) -> Tensor:
        """[N] per-sample values pushed into the replay buffers."""

    @abc.abstractmethod
    def _batch_violation(self, out: GroupCrossEntropy) -> tuple[Tensor, Tensor]:
        """([G] violation, [G] bool observed) from (all-reduced) batch statistics."""

    @abc.abstractmethod
    def _buffer_violation(self, est: BufferEstimate) -> Tensor:
        """[G] violation from the buffer estimates (used where ``est.available``)."""

    @abc.abstractmethod
    def _primal_coefficients(self, out: GroupCrossEntropy, lam: Tensor) -> Tensor:
        """[G] c_g of the primal weights (see :func:`primal_group_weights`)."""

    @abc.abstractmethod
    def _surrogate(self, out: GroupCrossEntropy) -> Tensor:
        """[G] primal surrogate constraint of groups in the batch (detached), NaN elsewhere."""

    @abc.abstractmethod
    def estimates(self) -> BufferEstimate:
        """The current replay-buffer estimates (requires buffers)."""

    # -- distributed -----------------------------------------------------------------------

    def _all_reduce(self, t: Tensor) -> Tensor:
        """Sum ``t`` over ranks when torch.distributed is initialised with world size > 1."""
        if not self.distributed:
            return t
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return t
        if dist.get_world_size(self.process_group) == 1:
            return t
        t = t.clone()
        dist.all_reduce(t, group=self.process_group)
        return t

    def _world_size(self) -> int:
        dist = torch.distributed
        if self.distributed and dist.is_available() and dist.is_initialized():
            return dist.get_world_size(self.process_group)
        return 1

    def _local_buffer_sums(self) -> Tensor:
        """[G] float64 sums of this rank's buffers (cached, see ``_sums``)."""
        if self._sums is None or self._sums_version != self.buffer._version:
            self._sums = self.buffer.sum(dim=1, dtype=torch.float64)
            self._sums_version = self.buffer._version
        return self._sums

    def _buffer_sums(self) -> tuple[Tensor, Tensor]:
        """(sum [G] float64, fill [G] int64) over ranks; full means fill == k * world size."""
        stacked = torch.stack([self._local_buffer_sums(), self.fill.to(torch.float64)])
        stacked = self._all_reduce(stacked)
        return stacked[0], stacked[1].round().to(torch.int64)

    # -- the step ------------------------------------------------------------------------

    def step(self, logits: Tensor, target: Tensor, group: Tensor) -> StepOutput:
        """Forward once; update buffers; dual step (if active); primal objective with new λ."""
        self._validate(logits, target, group)
        G = self.num_groups
        nan = torch.full((G,), math.nan, dtype=torch.float64, device=logits.device)
        fill = self.uses_buffers and not self.held_out
        if not self._active:
            out, loss, w = self._nft_step(logits, target, group)
            if fill:
                self._update_buffers(out, logits, target, group)
            self.num_steps += 1
            return StepOutput(loss, loss.detach(), out, w, self.multipliers, nan, self._surrogate(out))

        out = self._forward(logits, target, group)
        if fill:
            self._update_buffers(out, logits, target, group)
        violation = self._dual_step(out)

        lam = self.multiplier.weight.detach().view(-1)
        coef = self._primal_coefficients(out, lam).to(out.loss_sum.dtype)
        w = primal_group_weights(coef, out.count, self.primal)
        loss = (out.loss_sum * w).sum()
        cnt = out.count.to(out.loss_sum.dtype)
        mean_loss = out.loss_sum.detach().sum() / cnt.sum().clamp_min(1)
        self.num_steps += 1
        return StepOutput(loss, mean_loss, out, w, lam.clone(), violation, self._surrogate(out))

    @torch.no_grad()
    def observe(self, logits: Tensor, target: Tensor, group: Tensor) -> None:
        """Push held-out samples (``held_out=True``) into the replay buffers; no dual or primal step."""
        if not self.held_out:
            raise RuntimeError(f"{type(self).__name__}.observe needs held_out=True (else step() fills the buffers)")
        self._validate(logits, target, group)
        self._update_buffers(self._forward(logits.detach(), target, group), logits, target, group)

    def _update_buffers(self, out: GroupCrossEntropy, logits: Tensor, target: Tensor, group: Tensor) -> None:
        values = self._buffer_values(out, logits, target)
        keep = target != self.ignore_index
        # Ignored samples count nowhere: they never enter a buffer.
        if not bool(keep.all()):
            group, values = group[keep], values[keep]
        incremental = use_incremental_sums(self.num_groups, group.numel())
        cached = incremental and self._sums is not None and self._sums_version == self.buffer._version
        replay_buffer_update(self.buffer, self.head, self.fill, group, values.to(self.buffer.dtype), backend=self.backend)
        if cached:
            touched = torch.unique(group)  # only these rows changed
            self._sums[touched] = self.buffer[touched].sum(dim=1, dtype=torch.float64)
            self._sums_version = self.buffer._version
        else:
            self._sums = None

    def _dual_step(self, out: GroupCrossEntropy) -> Tensor:
        """Cooper dual step on the observed groups' violation; returns it ([G], NaN elsewhere)."""
        if self.uses_buffers:
            est = self.estimates()
            violation, observed = self._buffer_violation(est), est.available
        else:
            violation, observed = self._batch_violation(out)
        if self.constrained is not None:
            observed = observed & self.constrained
        # A non-finite violation (NaN/Inf logits: NaN losses, or NaN losses held in a buffer)
        # counts as unobserved: one bad batch must not turn the multipliers NaN for good. The
        # returned loss is NaN all the same, so the bad batch is not silent.
        observed = observed & torch.isfinite(violation)
        violation = torch.where(observed, violation, torch.nan)
        weight = self.multiplier.weight
        ascent = violation
        if self.dual_decay > 0:  # resilient: the relaxation's cost pulls λ back
            ascent = violation - self.dual_decay * weight.detach().view(-1).to(violation.dtype)
        is_pi = isinstance(self.dual_optimizer, PI)
        if is_pi or _is_stateless_sgd(self.dual_optimizer):
            # The dual Lagrangian sum_g λ_g v_g has gradient v_g in λ_g: set it directly instead of
            # building Cooper's dual Lagrangian and backpropagating through it. Same update for
            # stateless SGD (unobserved groups get 0 and stay put), ~0.5 ms less per step; PI
            # takes the mask of observed groups itself.
            weight.grad = torch.where(observed, ascent, 0.0).to(weight.dtype).view_as(weight)
            if is_pi:
                self.dual_optimizer.step(observed)
            else:
                self.dual_optimizer.step()
            stepped = True
        else:
            idx = observed.nonzero().view(-1)
            stepped = idx.numel() > 0
            if stepped:
                # Stateful optimizers (nuPI, momentum) need Cooper's sparse gradient so that
                # unobserved groups do not advance.
                cmp_state = self.cmp.compute_cmp_state(ascent[idx].to(weight.dtype), idx)
                self.dual_optimizer.zero_grad(set_to_none=True)
                cmp_state.compute_dual_lagrangian().backward()
                self.dual_optimizer.step()
        if stepped:
            self.multiplier.post_step_()  # projection onto λ >= 0 for inequalities
            if self.max_multiplier_sum is not None:
                with torch.no_grad():
                    total = weight.data.sum()
                    weight.data.mul_(torch.clamp(self.max_multiplier_sum / total.clamp_min(1e-30), max=1.0))
            self._check_multiplier_sum()
        return violation

    def _check_multiplier_sum(self) -> None:
        # Only the paper's objective has a sign flip at Σλ = 1; the others need no check (and
        # no host sync per step for it).
        if self.multiplier_sum_warning is None or self.primal != "paper":
            return
        total = float(self.multiplier.weight.detach().abs().sum())
        if total >= self.multiplier_sum_warning and not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}: the multipliers sum to {total:.3f} (>= {self.multiplier_sum_warning}); "
                "at 1 the weight (1 - Λ_B)/N of the average loss turns negative and training pushes the "
                "average loss up. Lower dual_lr, or set max_multiplier_sum.",
                RuntimeWarning,
                stacklevel=3,
            )
        elif total < self.multiplier_sum_warning:
            self._warned = False

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            {
                # Copies: torch optimizers hand out their live state tensors, which the next
                # in-place dual step would change under a saved checkpoint (or undo point).
                "cmp": _copied(self.cmp.state_dict()),
                "dual_optimizer": _copied(self.dual_optimizer.state_dict()),
                "active": self._active,
                "warned": self._warned,
                "buffer_size": self.buffer_size,
            }
        )
        if self.uses_buffers:
            state.update({"buffer": self.buffer.clone(), "head": self.head.clone(), "fill": self.fill.clone()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("buffer_size") != self.buffer_size:
            raise ValueError(f"state dict has buffer_size={state.get('buffer_size')}, expected {self.buffer_size}")
        self.cmp.load_state_dict(copy.deepcopy(state["cmp"]))
        self.dual_optimizer.load_state_dict(copy.deepcopy(state["dual_optimizer"]))
        self._active = bool(state["active"])
        self._warned = bool(state["warned"])
        if self.uses_buffers:
            self.buffer.copy_(state["buffer"])
            self.head.copy_(state["head"])
            self.fill.copy_(state["fill"])

    def to(self, device: torch.device | str) -> ConstrainedMethod:
        device = torch.device(device)
        if device == self.device:
            return self
        opt_state = self.dual_optimizer.state_dict()
        self.multiplier.weight.data = self.multiplier.weight.data.to(device)
        # The optimizer holds the same Parameter object; its state moves with load_state_dict.
        self.dual_optimizer.load_state_dict(opt_state)
        if self.uses_buffers:
            self.buffer, self.head, self.fill = (t.to(device) for t in (self.buffer, self.head, self.fill))
            self._sums = None  # a new buffer tensor: its version counter says nothing about the cache
        if self.constrained is not None:
            self.constrained = self.constrained.to(device)
        self._move_constants(device)
        self.device = device
        return self

    def _move_constants(self, device: torch.device) -> None:
        pass

    def log_dict(self) -> dict[str, float]:
        lam = self.multiplier.weight.detach().view(-1)
        out = {
            "multiplier_sum": float(lam.sum()),
            "multiplier_max": float(lam.max()),
            "active": float(self._active),
        }
        if self.uses_buffers:
            est = self.estimates()
            out["buffers_available"] = float(est.available.sum())
            if bool(est.available.any()):
                out["max_estimated_constraint"] = float(est.constraint[est.available].max())
        return out
