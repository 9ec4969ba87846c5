"""Pruning: which weights a mask keeps.

``block_magnitude_mask`` prunes whole [bh, bw] blocks of a weight by their L2 norm, the
block-structured masks whose empty tiles the Triton masked-linear kernels skip.
"""

from ceag.prune.block import block_magnitude_mask

__all__ = ["block_magnitude_mask"]
