"""Masked (pruned) layers built on ceag.ops."""

from ceag.nn.masked_conv import MaskedConv2d
from ceag.nn.masked_linear import MaskedLinear

__all__ = ["MaskedConv2d", "MaskedLinear"]
