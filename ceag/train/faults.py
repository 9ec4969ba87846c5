"""What a step does when its numbers are not finite: find the NaN / Inf, and name it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ceag.train.distributed import rank_and_world


class NonFiniteError(RuntimeError):
    """A training step produced a NaN / Inf loss, multiplier or gradient (``on_nonfinite="stop"``)."""


def nonfinite(
    loss: torch.Tensor, params: Sequence[torch.Tensor], multipliers: torch.Tensor | None = None, *, across_ranks: bool = True
) -> list[str]:
    """Which of the step's loss, ``multipliers`` and gradient norm (of ``params``' grads) are
    NaN / Inf: their names, [] when all are finite. One host synchronisation when all are."""
    values = {"loss": loss.detach().float().reshape(())}
    if multipliers is not None:
        values["multipliers"] = multipliers.detach().float().sum().to(loss.device)
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        values["gradients"] = _grad_norm(grads).float().to(loss.device)
    total = torch.stack(list(values.values())).mul(0).sum()  # NaN iff some value is NaN / Inf
    if across_ranks and rank_and_world()[1] > 1:  # every rank takes the same decision
        total = total.clone()
        torch.distributed.all_reduce(total)
    if math.isfinite(total):
        return []
    return [name for name, v in values.items() if not math.isfinite(v)] or ["values on another rank"]


def _grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The gradients' total norm (non-finite iff one of them is): one fused ``_foreach_norm``
    when they share a device and dtype (half the time of ``get_total_norm`` on adult's MLP)."""
    first = grads[0]
    if all(g.device == first.device and g.dtype == first.dtype and g.layout == torch.strided for g in grads):
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    return torch.nn.utils.get_total_norm(grads)


def listing(names: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]


class UndoPoint:
    """What a step changes before its loss is checked (the method's state, the RNG, running
    statistics such as BatchNorm's), captured so a bad step can be undone exactly."""

    def __init__(self, method: Any, device: torch.device, running_stats: Sequence[torch.Tensor]) -> None:
        self.method = method
        self.method_state = method.state_dict() if method is not None else None
        self.device = device
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.cpu_rng = torch.get_rng_state()
        self.running_stats = list(zip(running_stats, [b.clone() for b in running_stats]))

    def restore(self) -> None:
        if self.method_state is not None:
            self.method.load_state_dict(self.method_state)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)
        for buffer, saved in self.running_stats:
            buffer.copy_(saved)
