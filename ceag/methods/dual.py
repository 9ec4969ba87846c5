r"""The dual updater: the optimizers that move the multipliers, by name.

A dual step ascends the Lagrangian in λ on the groups observed this step (buffer full, or
present in the batch), with v_g their violation (ψ̂_g − ε for CEAG, L̂_g − L̂ or |·| minus ε for
EL); unobserved groups keep λ_g. Then the multiplier's ``post_step_`` projects onto λ ≥ 0 for
inequality constraints (not for signed EL's equalities), written max(0, ·) below.

- ``"sgd"`` (default): λ_g ← max(0, λ_g + η v_g). Stateless, so :class:`ConstrainedMethod`
  writes v_g into the gradient directly instead of going through Cooper's dual Lagrangian
  (:func:`_is_stateless_sgd`; tested equal).
- ``"pi"`` (:class:`PI`): with ξ_g the moving average of g's past violations (0 at first)::

      λ_g ← max(0, λ_g + η (K_I v_g + K_P (1 − ν)(v_g − ξ_g)))   (no K_P term the first time)
      ξ_g ← ν ξ_g + (1 − ν) v_g

- ``"nupi"``: :class:`cooper.optim.nuPI`, the same update as ``"pi"`` through Cooper's sparse
  gradient on the observed entries (a host sync per step).
- A callable ``(params, lr=..., **kwargs) -> Optimizer`` built with ``maximize=True``; stateful
  ones get Cooper's sparse gradient, so unobserved groups do not advance their state.
"""

from __future__ import annotations

import math

import cooper
import torch
from torch import Tensor

__all__ = ["DUAL_OPTIMIZERS", "PI"]


class PI(torch.optim.Optimizer):
    r"""Dense PI controller on the multipliers: Cooper's nuPI for sparse errors, without a host sync.

    ``step(observed)`` reads the error e (the violation) from ``p.grad`` and updates only the
    entries where ``observed`` is True; for such an entry g (signs for ``maximize=True``)::

        λ_g ← λ_g + η (K_I e_g + K_P (1 − ν)(e_g − ξ_g))      (no K_P term the first time g is observed)
        ξ_g ← ν ξ_g + (1 − ν) e_g

    ξ is a per-entry moving average of the error (ξ = 0 before the first observation), so the
    K_P term reacts to the change of a group's error since it was last observed. With K_P = 0
    and K_I = 1 this is SGD. The same update as :class:`cooper.optim.nuPI` (``init_type=SGD``)
    with a sparse gradient on the observed entries (tested equal), but as O(G) masked vector
    work instead of a ``nonzero`` (a host sync) and sparse tensors per step. The projection
    onto λ ≥ 0 is the multiplier's ``post_step_``.
    """

    def __init__(self, params, lr: float, Kp: float = 0.0, Ki: float = 1.0, ema_nu: float = 0.0, maximize: bool = True):
        for name, value in (("lr", lr), ("Kp", Kp), ("Ki", Ki)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"PI {name} must be a finite number >= 0, got {value}")
        if not 0.0 <= ema_nu < 1.0:
            raise ValueError(f"PI ema_nu must be in [0, 1), got {ema_nu}")
        super().__init__(params, dict(lr=lr, Kp=Kp, Ki=Ki, ema_nu=ema_nu, maximize=maximize))

    @torch.no_grad()
    def step(self, observed: Tensor | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, kp, ki, nu = group["lr"], group["Kp"], group["Ki"], group["ema_nu"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = p.grad
                mask = torch.ones_like(e, dtype=torch.bool) if observed is None else observed.view_as(e)
                state = self.state[p]
                if not state:
                    state["xi"] = torch.zeros_like(p)
                    state["seen"] = torch.zeros_like(p, dtype=torch.bool)
                xi, seen = state["xi"], state["seen"]
                update = ki * e + torch.where(seen, kp * (1 - nu) * (e - xi), torch.zeros_like(e))
                p.add_(torch.where(mask, update, torch.zeros_like(update)), alpha=lr if group["maximize"] else -lr)
                xi.copy_(torch.where(mask, nu * xi + (1 - nu) * e, xi))
                seen.logical_or_(mask)


#: Dual optimizers by name (a callable building a torch optimizer is accepted too).
DUAL_OPTIMIZERS = ("sgd", "pi", "nupi")


def _make_dual_optimizer(kind, params, lr: float, kwargs: dict) -> torch.optim.Optimizer:
    if callable(kind) and not isinstance(kind, str):
        opt = kind(params, lr=lr, **kwargs)
    elif kind == "sgd":
        opt = torch.optim.SGD(params, lr=lr, maximize=True, **kwargs)
    elif kind == "pi":
        opt = PI(params, lr=lr, maximize=True, **kwargs)
    elif kind == "nupi":
        opt = cooper.optim.nuPI(params, lr=lr, maximize=True, **kwargs)
    else:
        raise ValueError(f"dual_optimizer must be 'sgd', 'pi', 'nupi' or a callable(params, lr=...), got {kind!r}")
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"dual_optimizer must build a torch.optim.Optimizer, got {type(opt).__name__}")
    if not all(g.get("maximize", False) for g in opt.param_groups):
        raise ValueError("dual_optimizer must be built with maximize=True (gradient ascent on the multipliers)")
    return opt


def _is_stateless_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """Plain SGD without momentum or weight decay: its step needs only this step's gradient."""
    return type(optimizer) is torch.optim.SGD and all(
        g["momentum"] == 0 and g["weight_decay"] == 0 for g in optimizer.param_groups
    )
