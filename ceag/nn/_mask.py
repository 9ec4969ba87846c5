"""Validation shared by the masked layers."""

from __future__ import annotations

import torch


def check_mask(mask: object, weight: torch.Tensor) -> torch.Tensor:
    """Raise unless ``mask`` is a bool tensor of ``weight``'s shape; return it.

    A mask on another (real) device is accepted: it is copied into the layer's mask buffer.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    if mask.shape != weight.shape:
        raise ValueError(f"mask must have weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
    if mask.is_meta and not weight.is_meta:
        raise ValueError(f"mask is a meta tensor (no data) but weight is on {weight.device}")
    return mask
