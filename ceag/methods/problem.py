"""The Cooper problem: one inequality (or equality) constraint with one multiplier per group."""

from __future__ import annotations

import cooper
import torch
from cooper.multipliers import IndexedMultiplier
from torch import Tensor

__all__ = ["GroupConstraintProblem"]


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
