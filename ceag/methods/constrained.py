"""Fine-tuning methods for sparse models: NFT, EL, EL+RB and CEAG (ALGORITHM.md).

Every method turns one batch's logits into the differentiable primal loss of a training step::

    method = CEAG(num_groups, dense_stats, tolerance=0.02)      # dense_stats: ceag.metrics
    for inputs, target, group in loader:
        out = method.step(model(inputs), target, group)         # forward once, dual step
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()                                     # one weighted cross-entropy
        optimizer.step()                                        # + re-apply masks, if any

``step`` follows the order of ALGORITHM.md: the fused op's forward; buffer update; dual
step on the *true* violation (only for groups whose estimate is available); the primal
objective rebuilt with the new multipliers. The primal objective of every method is one
per-group weighted cross-entropy, ``loss = Σ_g w_g loss_sum_g`` with

    w_g = (1 − C_B)/N + c_g/n_g   for groups g in the batch (0 otherwise),  C_B = Σ_{g∈B} c_g,

N the batch's sample count and n_g the group's. For CEAG c_g = λ_g, and ``loss`` equals
L_B + Σ_{g∈B} λ_g ψ̃_g up to a constant, ψ̃_g = [L_g,B − L_g(θ_d)] − [L_B − L(θ_d)]. For EL
c_g = λ_g·sign(L_g,B − L_B) (``variant="abs"``) or λ_g (``"signed"``). Its backward is one
sweep of the fused cross-entropy backward over the logits, whatever G; the per-step work of
a constrained method on top of NFT is O(G) vector work (no Python loop over groups).
The weights cannot be handed to the fused op's forward (``group_weight``): dual-first order
needs this batch's correctness before the multipliers, hence the weights, are known. NFT and
inactive methods, whose weights are known up front, do use it (gradient written in the
forward).

The Lagrangian machinery is Cooper's (``cooper-optim`` 1.0): one
:class:`cooper.multipliers.IndexedMultiplier` entry per group in a :class:`cooper.Constraint`
(inequality, or equality for signed EL) of a :class:`cooper.ConstrainedMinimizationProblem`;
each dual step builds a :class:`cooper.ConstraintState` whose ``strict_violation`` /
``strict_constraint_features`` are the observed (available) groups' violations and indices,
computes Cooper's dual Lagrangian, and steps the dual optimizer (``maximize=True``: SGD by
default, Cooper's nuPI on request) followed by the multiplier's ``post_step_`` (projection
onto λ ≥ 0 for inequalities). With SGD this is exactly λ_g ← max(0, λ_g + η_λ (ψ̂_g − ε)).
The multipliers get sparse gradients, so stateful dual optimizers only advance observed
groups.

Weight decay is the primal optimizer's business (``torch.optim.SGD(weight_decay=...)`` over
all trainable parameters): no method adds it to the loss.

Safety of the dual learning rate: once Σ_g λ_g reaches 1 the weight (1 − Λ_B)/N of the
average loss turns negative and the primal step pushes the average loss *up* (ALGORITHM.md,
practical notes: collapse to 25% accuracy at dual lr 5e-2). The default dual lr is 1e-3
(the paper used 1e-4 to 1e-2); a ``RuntimeWarning`` is raised when Σ_g |λ_g| reaches
``multiplier_sum_warning`` (0.8), and ``max_multiplier_sum`` (off by default, as in the
paper) rescales λ after each dual step so that Σ_g λ_g ≤ the given bound (a rescaling, not
the Euclidean projection, which keeps the multipliers' ratios).
"""

from __future__ import annotations

import abc
import copy
import math
import numbers
import warnings
from typing import Any, Callable, NamedTuple

import cooper
import torch
from cooper.multipliers import IndexedMultiplier
from torch import Tensor

from ceag.metrics import GroupStats
from ceag.ops import BACKENDS, GroupCrossEntropy, group_cross_entropy, replay_buffer_update
from ceag.ops._checks import INDEX_DTYPES, check_tensor

__all__ = [
    "CEAG",
    "EL",
    "ELRB",
    "METHODS",
    "NFT",
    "BufferEstimate",
    "ConstrainedMethod",
    "GroupConstraintProblem",
    "Method",
    "StepOutput",
    "build_method",
    "primal_group_weights",
]


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


class BufferEstimate(NamedTuple):
    """Replay-buffer estimates (all [G] float64 unless said otherwise).

    ``value``: per-group buffer mean (accuracy for CEAG, loss for EL+RB), NaN where the
    buffer is not full; ``available``: bool [G], buffer full (and, for CEAG, dense statistics
    known); ``overall``: scalar tensor, Σ p_g value_g / Σ p_g over available groups (NaN if
    none); ``constraint``: [G] the estimated constraint (ψ̂_g for CEAG, L̂_g − L̂ or |·| for
    EL+RB), NaN where unavailable.
    """

    value: Tensor
    available: Tensor
    overall: Tensor
    constraint: Tensor


#: The primal objectives of a constrained method (see :func:`primal_group_weights`).
PRIMALS = ("paper", "positive", "normalized")
#: How CEAG's multipliers enter the primal: λ_g as is ("absolute", the paper), or times the
#: group's share of the batch ("share": w_g = (1 + λ_g)/N before normalisation).
MULTIPLIER_SCALES = ("absolute", "share")


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


# ---------------------------------------------------------------------------------------
# Base: NFT
# ---------------------------------------------------------------------------------------


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

    def to(self, device: torch.device | str) -> "Method":
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
            raise ValueError(
                f"logits are on {logits.device} but the method's state is on {self.device}: call method.to(device)"
            )

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


# ---------------------------------------------------------------------------------------
# Cooper problem
# ---------------------------------------------------------------------------------------


class GroupConstraintProblem(cooper.ConstrainedMinimizationProblem):
    """A Cooper CMP with one constraint ``group`` holding one multiplier entry per group.

    :meth:`compute_cmp_state` wraps given tensors (the methods compute the violations
    themselves from the fused op and the replay buffers): ``loss`` may be None,
    ``violation`` / ``features`` are the observed groups' violations and indices.
    """

    def __init__(self, num_groups: int, constraint_type: cooper.ConstraintType, device: torch.device) -> None:
        super().__init__()
        self.group = cooper.Constraint(
            constraint_type=constraint_type,
            formulation_type=cooper.formulations.Lagrangian,
            multiplier=IndexedMultiplier(num_constraints=num_groups, device=device),
        )

    def compute_cmp_state(
        self,
        violation: Tensor,
        features: Tensor,
        loss: Tensor | None = None,
        *,
        contributes_to_primal_update: bool = False,
    ) -> cooper.CMPState:
        state = cooper.ConstraintState(
            violation=violation,
            constraint_features=features,
            contributes_to_primal_update=contributes_to_primal_update,
        )
        return cooper.CMPState(loss=loss, observed_constraints={self.group: state})


# ---------------------------------------------------------------------------------------
# Constrained methods
# ---------------------------------------------------------------------------------------


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


#: Replay-buffer sums are updated per touched group when G > this × batch size, else recounted.
_INCREMENTAL_SUMS_RATIO = 12


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
        multiplier_sum_warning: warn when Σ_g |λ_g| reaches this (None: never).
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
        distributed: bool = True,
        process_group: Any = None,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        backend: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            num_groups, label_smoothing=label_smoothing, ignore_index=ignore_index, backend=backend, device=device
        )
        self.tolerance = _check_nonneg("tolerance", tolerance)
        dual_lr = _to_float("dual_lr", dual_lr)
        if not (dual_lr > 0 and math.isfinite(dual_lr)):
            raise ValueError(f"dual_lr must be a finite number > 0, got {dual_lr}")
        self.dual_lr = dual_lr
        if buffer_size is not None:
            _check_int("buffer_size", buffer_size, 1)
        self.buffer_size = buffer_size
        if max_multiplier_sum is not None:
            max_multiplier_sum = _to_float("max_multiplier_sum", max_multiplier_sum)
            if not max_multiplier_sum > 0:
                raise ValueError(f"max_multiplier_sum must be > 0, got {max_multiplier_sum}")
        self.max_multiplier_sum = max_multiplier_sum
        if constrained is not None:
            if not isinstance(constrained, Tensor) or constrained.dtype != torch.bool or constrained.shape != (num_groups,):
                got = f"{tuple(constrained.shape)} {constrained.dtype}" if isinstance(constrained, Tensor) else type(constrained).__name__
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
        if not self._active:
            out, loss, w = self._nft_step(logits, target, group)
            if self.uses_buffers:
                self._update_buffers(out, logits, target, group)
            self.num_steps += 1
            return StepOutput(loss, loss.detach(), out, w, self.multipliers, nan, self._surrogate(out))

        out = self._forward(logits, target, group)
        if self.uses_buffers:
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

    def _update_buffers(self, out: GroupCrossEntropy, logits: Tensor, target: Tensor, group: Tensor) -> None:
        values = self._buffer_values(out, logits, target)
        keep = target != self.ignore_index
        # Ignored samples count nowhere: they never enter a buffer.
        if not bool(keep.all()):
            group, values = group[keep], values[keep]
        # Incremental sums pay (unique + gather) only when G is large next to the batch; below
        # that a full recount is cheaper (measured on CPU: slower at G = 1000, N = 256; 20%
        # faster per method step at G = 10,000).
        incremental = self.num_groups > _INCREMENTAL_SUMS_RATIO * group.numel()
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
        if _is_stateless_sgd(self.dual_optimizer):
            # The dual Lagrangian sum_g λ_g v_g has gradient v_g in λ_g: set it directly instead of
            # building Cooper's dual Lagrangian and backpropagating through it. Same update for
            # stateless SGD (unobserved groups get 0 and stay put), ~0.5 ms less per step.
            weight.grad = torch.where(observed, violation, 0.0).to(weight.dtype).view_as(weight)
            self.dual_optimizer.step()
            stepped = True
        elif isinstance(self.dual_optimizer, PI):
            weight.grad = torch.where(observed, violation, 0.0).to(weight.dtype).view_as(weight)
            self.dual_optimizer.step(observed)
            stepped = True
        else:
            idx = observed.nonzero().view(-1)
            stepped = idx.numel() > 0
            if stepped:
                # Stateful optimizers (nuPI, momentum) need Cooper's sparse gradient so that
                # unobserved groups do not advance.
                cmp_state = self.cmp.compute_cmp_state(violation[idx].to(weight.dtype), idx)
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
        if self.multiplier_sum_warning is None:
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

    def _estimate_overall(self, value: Tensor, available: Tensor, shares: Tensor) -> Tensor:
        """Σ p_g value_g / Σ p_g over available groups (NaN if none)."""
        p = torch.where(available, shares, torch.zeros_like(shares))
        v = torch.where(available, value, torch.zeros_like(value))
        denom = p.sum()
        return torch.where(denom > 0, (p * v).sum() / denom.clamp_min(1e-300), torch.nan)

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            {
                # Deep copies: torch optimizers hand out their live state tensors, which the
                # next in-place dual step would change under a saved checkpoint.
                "cmp": copy.deepcopy(self.cmp.state_dict()),
                "dual_optimizer": copy.deepcopy(self.dual_optimizer.state_dict()),
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

    def to(self, device: torch.device | str) -> "ConstrainedMethod":
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


# ---------------------------------------------------------------------------------------
# CEAG
# ---------------------------------------------------------------------------------------


class CEAG(ConstrainedMethod):
    """Constrained excess accuracy gaps: ψ_g ≤ ε for every group (ALGORITHM.md).

    Args:
        num_groups: G.
        dense: the dense model's *train-set* :class:`~ceag.metrics.GroupStats` (from
            :func:`ceag.metrics.dense_reference`): accuracies, losses and group shares p_g.
        tolerance: ε (default 0.01).
        buffer_size: k (default 40), or None for CEAG without replay buffers (the dual step
            then uses the mini-batch accuracies of the groups in the batch).
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
        primal: str = "paper",
        multiplier_scale: str = "absolute",
        **kwargs: Any,
    ) -> None:
        if primal not in PRIMALS:
            raise ValueError(f"primal must be one of {', '.join(PRIMALS)}; got {primal!r}")
        if multiplier_scale not in MULTIPLIER_SCALES:
            raise ValueError(f"multiplier_scale must be one of {', '.join(MULTIPLIER_SCALES)}; got {multiplier_scale!r}")
        self.primal = primal
        self.multiplier_scale = multiplier_scale
        if not isinstance(dense, GroupStats):
            raise TypeError(f"dense must be a ceag.metrics.GroupStats, got {type(dense).__name__}")
        if dense.num_groups != num_groups:
            raise ValueError(f"dense has {dense.num_groups} groups, expected num_groups={num_groups}")
        if dense.total == 0:
            raise ValueError("dense has no samples")
        super().__init__(num_groups, tolerance=tolerance, buffer_size=buffer_size, **kwargs)
        self.dense = dense.cpu()
        self._move_constants(self.device)

    def _move_constants(self, device: torch.device) -> None:
        d = self.dense
        self._dense_known = (d.count > 0).to(device)
        self._dense_acc = torch.nan_to_num(d.accuracy, nan=0.0).to(device)
        self._dense_loss = torch.nan_to_num(d.loss, nan=0.0).to(device)
        self._dense_overall_loss = torch.tensor(d.overall_loss, dtype=torch.float64, device=device)
        self._shares = d.shares.to(device)

    def _buffer_values(self, out, logits, target):
        return out.sample_correct

    def estimates(self) -> BufferEstimate:
        if not self.uses_buffers:
            raise RuntimeError("CEAG built with buffer_size=None has no replay buffers")
        sums, fills = self._buffer_sums()
        k = self.buffer_size * self._world_size()
        available = (fills >= k) & self._dense_known
        acc = torch.where(available, sums / k, torch.nan)
        overall = self._estimate_overall(acc, available, self._shares)
        dense_overall = self._estimate_overall(self._dense_acc, available, self._shares)
        psi = (self._dense_acc - acc) - (dense_overall - overall)
        return BufferEstimate(acc, available, overall, torch.where(available, psi, torch.nan))

    def _buffer_violation(self, est):
        return est.constraint - self.tolerance

    def _batch_violation(self, out):
        stats = self._all_reduce(torch.stack([out.correct.to(torch.float64), out.count.to(torch.float64)]))
        correct, count = stats[0], stats[1]
        observed = (count > 0) & self._dense_known
        acc = correct / count.clamp_min(1)
        n = count.sum().clamp_min(1)
        overall = correct.sum() / n
        dense_overall = (count * self._dense_acc).sum() / n
        psi = (self._dense_acc - acc) - (dense_overall - overall)
        return psi - self.tolerance, observed

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


# ---------------------------------------------------------------------------------------
# EL and EL+RB
# ---------------------------------------------------------------------------------------


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
        overall = self._estimate_overall(loss, available, self._shares)
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


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

METHODS: dict[str, type[Method]] = {"nft": NFT, "el": EL, "el_rb": ELRB, "ceag": CEAG}


def _is_stateless_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """Plain SGD without momentum or weight decay: its step needs only this step's gradient."""
    return type(optimizer) is torch.optim.SGD and all(
        g["momentum"] == 0 and g["weight_decay"] == 0 for g in optimizer.param_groups
    )


def build_method(name: str, num_groups: int, *, dense: GroupStats | None = None, **kwargs: Any) -> Method:
    """Build a method by name: "nft", "el", "el_rb", "ceag" (buffers) or "ceag_batch" (none).

    ``dense`` (the dense train-set GroupStats) is required by CEAG; EL+RB takes its group
    shares from it unless ``group_shares`` is given.
    """
    if name == "nft":
        return NFT(num_groups, **kwargs)
    if name == "el":
        return EL(num_groups, **kwargs)
    if name in ("ceag", "ceag_batch"):
        if dense is None:
            raise ValueError(f"method {name!r} needs dense (the dense model's train-set GroupStats)")
        if name == "ceag_batch":
            if kwargs.get("buffer_size") is not None:
                raise ValueError(
                    f"method 'ceag_batch' has no replay buffers: buffer_size must be None, got {kwargs['buffer_size']!r}"
                )
            kwargs["buffer_size"] = None
        return CEAG(num_groups, dense, **kwargs)
    if name == "el_rb":
        shares = kwargs.pop("group_shares", None)
        if shares is None:
            if dense is None:
                raise ValueError("method 'el_rb' needs group_shares or dense")
            shares = dense.shares
        return ELRB(num_groups, shares, **kwargs)
    raise ValueError(f"name must be one of nft, el, el_rb, ceag, ceag_batch; got {name!r}")
