"""Masked (pruned) layers built on ceag.ops."""

from ceag.nn.masked_linear import MaskedLinear

__all__ = ["MaskedLinear"]
