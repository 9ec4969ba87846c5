"""Masked (pruned) layers built on ceag.ops: a dense weight with a mask (MaskedLinear,
MaskedConv2d), or only the kept weights (CompactLinear)."""

from ceag.nn.compact_linear import CompactLinear
from ceag.nn.masked_conv import MaskedConv2d
from ceag.nn.masked_linear import COMPACT_BELOW_DENSITY, STORAGES, MaskedLinear

__all__ = ["COMPACT_BELOW_DENSITY", "STORAGES", "CompactLinear", "MaskedConv2d", "MaskedLinear"]
