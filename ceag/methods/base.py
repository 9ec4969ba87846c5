"""The method interface, NFT, the primal objective's per-group weights, argument checks.

Every method's primal objective is one per-group weighted cross-entropy Σ_g w_g loss_sum_g;
:func:`primal_group_weights` gives w_g from the coefficients c_g a constrained method
derives from its multipliers (see the package docstring).
"""

from __future__ import annotations

import abc
import math
import numbers
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ceag.ops import BACKENDS, GroupCrossEntropy, group_cross_entropy
from ceag.ops._checks import INDEX_DTYPES, check_num_groups, check_tensor

__all__ = ["NFT", "PRIMALS", "Method", "StepOutput", "primal_group_weights"]


class StepOutput(NamedTuple):
    """What :meth:`Method.step` returns.

    - ``loss``: differentiable scalar primal objective; call ``loss.backward()``.
    - ``mean_loss``: detached mean cross-entropy of the batch, L_B.
    - ``stats``: the fused op's output (``loss_sum``, ``correct``, ``count``, ``sample_correct``).
    - ``group_weight``: [G] the weights w_g of the primal objective (0 for absent groups).
    - ``multipliers``: [G] λ after this step's dual step (detached copy; zeros for NFT).
    - ``violation``: [G] the violation the dual step used (ψ̂_g − ε for CEAG), NaN for groups
      not observed / not available; all NaN when no dual step ran.
    - ``surrogate``: [G] the primal surrogate constraint per group (detached), NaN for groups
      absent from the batch; None for NFT.
    """

    loss: Tensor
    mean_loss: Tensor
    stats: GroupCrossEntropy
    group_weight: Tensor
    multipliers: Tensor
    violation: Tensor
    surrogate: Tensor | None = None


#: The primal objectives of a constrained method (see :func:`primal_group_weights`).
PRIMALS = ("paper", "positive", "normalized")


def primal_group_weights(coef: Tensor, count: Tensor, primal: str = "paper") -> Tensor:
    """Per-group sample weights w_g of the primal objective Σ_g w_g loss_sum_g (0 for absent groups).

    ``coef`` [G] holds c_g (λ_g for CEAG), ``count`` [G] the batch counts n_g; C_B is the sum
    of c_g over groups in the batch and N = Σ n_g. No host synchronisation.

    - ``"paper"``: w_g = (1 − C_B)/N + c_g/n_g, so Σ_g w_g loss_sum_g = L_B + Σ_{g∈B} c_g
      (L_g,B − L_B): the gradient of the Lagrangian. Once C_B > 1 the average loss has a
      negative weight and the step pushes it *up*.
    - ``"positive"``: w_g = 1/N + c_g/n_g, i.e. L_B + Σ c_g L_g,B: the same surrogate with a
      stop-gradient on its average-loss term, so every weight is > 0 for c ≥ 0.
    - ``"normalized"``: the positive weights divided by their total 1 + C_B (Σ_g n_g w_g = 1):
      the same direction as ``"positive"``, at the step size of the plain mean loss.
    """
    if primal not in PRIMALS:
        raise ValueError(f"primal must be one of {', '.join(PRIMALS)}; got {primal!r}")
    present = count > 0
    cnt = count.to(coef.dtype)
    n = cnt.sum().clamp_min(1)
    c = torch.where(present, coef, torch.zeros_like(coef))
    total = c.sum()
    w = ((1 - total) if primal == "paper" else 1.0) / n + c / cnt.clamp_min(1)
    if primal == "normalized":
        w = w / (1 + total)
    return torch.where(present, w, torch.zeros_like(w))


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return value


def _to_float(name: str, value: Any) -> float:
    """``float(value)``, or a TypeError naming ``name`` for anything but a real number."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a tensor of several elements
        raise TypeError(f"{name} must be a real number, got {value!r}") from exc


def _check_nonneg(name: str, value: Any) -> float:
    value = _to_float(name, value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


class Method(abc.ABC):
    """Common interface: ``step(logits, target, group) -> StepOutput``, state dict, logging.

    Args:
        num_groups: G >= 1.
        label_smoothing, ignore_index: as in :func:`ceag.ops.group_cross_entropy`.
        backend: kernel backend of the fused ops (default by device).
        device: where the method's state lives (multipliers, buffers); default CPU. Use
            :meth:`to` to move it next to the model.
    """

    name: str = "method"

    def __init__(
        self,
        num_groups: int,
        *,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        backend: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.num_groups = _check_int("num_groups", num_groups, 1)
        check_num_groups(self.num_groups, bytes_per_group=24 + 4 * 64)  # stats + a replay buffer
        self.label_smoothing = _to_float("label_smoothing", label_smoothing)
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        self.ignore_index = int(ignore_index)
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
        self.backend = backend
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.num_steps = 0

    # -- public API ----------------------------------------------------------------------

    @abc.abstractmethod
    def step(self, logits: Tensor, target: Tensor, group: Tensor) -> StepOutput:
        """One training step's bookkeeping; returns the differentiable primal loss."""

    @property
    def active(self) -> bool:
        """Whether constraints act on this step (always False for NFT)."""
        return False

    @property
    def multipliers(self) -> Tensor:
        """[G] current multipliers (detached copy); zeros for methods without any."""
        return torch.zeros(self.num_groups, device=self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_groups": self.num_groups, "num_steps": self.num_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state dict is for method {state.get('name')!r}, not {self.name!r}")
        if state.get("num_groups") != self.num_groups:
            raise ValueError(f"state dict has num_groups={state.get('num_groups')}, expected {self.num_groups}")
        self.num_steps = int(state["num_steps"])

    def to(self, device: torch.device | str) -> Method:
        self.device = torch.device(device)
        return self

    def log_dict(self) -> dict[str, float]:
        """Scalars worth logging each step / epoch (syncs with the device)."""
        return {}

    # -- helpers -------------------------------------------------------------------------

    def _validate(self, logits: Tensor, target: Tensor, group: Tensor) -> None:
        check_tensor("logits", logits, dim=2)
        n = logits.shape[0]
        for name, t in (("target", target), ("group", group)):
            check_tensor(name, t, dim=1, dtypes=INDEX_DTYPES, device=logits.device, device_of="logits")
            if t.shape[0] != n:
                raise ValueError(f"{name} must have length N={n} (logits.shape[0]), got {t.shape[0]}")
        if logits.device != self.device:
            raise ValueError(f"logits are on {logits.device} but the method's state is on {self.device}: call method.to(device)")

    def _forward(self, logits: Tensor, target: Tensor, group: Tensor, group_weight: Tensor | None = None):
        return group_cross_entropy(
            logits,
            target,
            group,
            self.num_groups,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
            group_weight=group_weight,
            backend=self.backend,
        )

    def _mean_weights(self, target: Tensor, dtype: torch.dtype) -> Tensor:
        """w_g = 1/N for every group (N = samples not ignored): plain mean cross-entropy."""
        n = (target != self.ignore_index).sum().clamp_min(1).to(dtype)
        return (1.0 / n).expand(self.num_groups).contiguous()

    def _nft_step(self, logits: Tensor, target: Tensor, group: Tensor) -> tuple[GroupCrossEntropy, Tensor, Tensor]:
        """The fused forward with w_g = 1/N (gradient written in the same sweep)."""
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        w = self._mean_weights(target, dtype)
        out = self._forward(logits, target, group, w)
        return out, out.weighted_loss, w


class NFT(Method):
    """Naive fine-tuning: the mean cross-entropy of the batch, nothing else."""

    name = "nft"

    def step(self, logits: Tensor, target: Tensor, group: Tensor) -> StepOutput:
        self._validate(logits, target, group)
        out, loss, w = self._nft_step(logits, target, group)
        self.num_steps += 1
        nan = torch.full((self.num_groups,), math.nan, dtype=torch.float64, device=logits.device)
        zeros = torch.zeros(self.num_groups, device=logits.device)
        return StepOutput(loss, loss.detach(), out, w, zeros, nan, None)
