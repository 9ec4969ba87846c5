"""Validation shared by the masked layers."""

from __future__ import annotations

import torch


def check_mask(mask: object, weight: torch.Tensor) -> torch.Tensor:
    """Raise unless ``mask`` is a bool tensor of ``weight``'s shape; return it."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    if mask.shape != weight.shape:
        raise ValueError(f"mask must have weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
    return mask
