"""Gradual magnitude pruning (GMP, Zhu & Gupta 2017): the cubic sparsity schedule."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

from ceag.prune.magnitude import check_sparsity, magnitude_prune

__all__ = ["GMPSchedule"]


def _check_step(value, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


class GMPSchedule:
    """Cubic sparsity schedule ``s(t) = s_f + (s_i - s_f) (1 - t / T)^3``, pruning every
    ``frequency`` steps from ``start_step`` to ``end_step``.

    With ``t = clip(step - start_step, 0, T)`` and ``T = end_step - start_step``:
    :meth:`sparsity_at` is ``initial_sparsity`` up to ``start_step`` and ``final_sparsity``
    from ``end_step`` on. :meth:`should_prune` is True at ``start_step + n * frequency`` up to
    ``end_step``, and always at ``end_step`` itself (so the final sparsity is reached even
    when ``T`` is not a multiple of ``frequency``). A "step" is whatever the caller counts:
    epochs (the paper prunes once per epoch over the first 15) or optimizer steps.
    ``end_step == start_step`` is one-shot pruning to ``final_sparsity`` at that step.

    Typical use, once per step (epoch) before training on it::

        schedule = GMPSchedule(0.0, 0.9, start_step=0, end_step=14, frequency=1)
        for epoch in range(epochs):
            schedule.step(model, epoch, optimizer=opt)  # prunes when due, masks opt state
            ...  # train; call ceag.prune.apply_masks_(model) after optimizer steps

    :meth:`step` prunes with :func:`~ceag.prune.magnitude_prune` (masks only shrink, so calling
    it twice for the same step, e.g. after resuming, changes nothing). The schedule is a pure
    function of the step; :meth:`state_dict` holds its arguments and the last step seen.
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        start_step: int,
        end_step: int,
        frequency: int = 1,
        *,
        scope: str = "layer",
    ) -> None:
        s_i = check_sparsity(initial_sparsity, "initial_sparsity")
        s_f = check_sparsity(final_sparsity, "final_sparsity")
        if s_i > s_f:
            raise ValueError(f"initial_sparsity ({initial_sparsity!r}) must be <= final_sparsity ({final_sparsity!r})")
        start = _check_step(start_step, "start_step")
        end = _check_step(end_step, "end_step")
        if end < start:
            raise ValueError(f"end_step ({end_step!r}) must be >= start_step ({start_step!r})")
        freq = _check_step(frequency, "frequency", minimum=1)
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.initial_sparsity, self.final_sparsity = s_i, s_f
        self.start_step, self.end_step, self.frequency = start, end, freq
        self.scope = scope
        self.last_step: int | None = None

    def sparsity_at(self, step: int) -> float:
        """Target sparsity at ``step`` (clipped to the schedule's ends)."""
        step = _check_step(step, "step")
        if step >= self.end_step:  # first: a one-shot schedule (start == end) is s_f there
            return self.final_sparsity
        if step <= self.start_step:
            return self.initial_sparsity
        frac = 1.0 - (step - self.start_step) / (self.end_step - self.start_step)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * frac**3

    def should_prune(self, step: int) -> bool:
        """Whether :meth:`step` prunes at ``step``."""
        step = _check_step(step, "step")
        if not self.start_step <= step <= self.end_step:
            return False
        return step == self.end_step or (step - self.start_step) % self.frequency == 0

    def finished(self, step: int) -> bool:
        """True from ``end_step`` on: once :meth:`step` ran there, no more pruning follows."""
        return _check_step(step, "step") >= self.end_step

    @property
    def prune_steps(self) -> list[int]:
        """Every step at which :meth:`step` prunes."""
        steps = list(range(self.start_step, self.end_step + 1, self.frequency))
        if steps[-1] != self.end_step:
            steps.append(self.end_step)
        return steps

    def step(self, model: nn.Module, step: int, *, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Prune ``model`` to :meth:`sparsity_at` ``(step)`` if :meth:`should_prune`; returns
        whether it pruned. ``optimizer``: also zero its state at pruned positions."""
        due = self.should_prune(step)
        if due:
            magnitude_prune(model, self.sparsity_at(step), self.scope, optimizer=optimizer)
        self.last_step = int(step)
        return due

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "start_step": self.start_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
            "scope": self.scope,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore arguments and last step (validated as in the constructor)."""
        keys = set(self.state_dict())
        if set(state_dict) != keys:
            raise KeyError(f"state_dict keys {sorted(state_dict)} do not match GMPSchedule's {sorted(keys)}")
        last = state_dict["last_step"]
        if last is not None:
            last = _check_step(last, "last_step")
        self.__init__(
            state_dict["initial_sparsity"],
            state_dict["final_sparsity"],
            state_dict["start_step"],
            state_dict["end_step"],
            state_dict["frequency"],
            scope=state_dict["scope"],
        )
        self.last_step = last

    def __repr__(self) -> str:
        return (
            f"GMPSchedule(initial_sparsity={self.initial_sparsity}, final_sparsity={self.final_sparsity}, "
            f"start_step={self.start_step}, end_step={self.end_step}, frequency={self.frequency}, "
            f"scope={self.scope!r})"
        )
