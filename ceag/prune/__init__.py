"""Pruning: which weights a mask keeps, and when.

- ``sparsify`` swaps a model's Linear / Conv2d layers for masked ones (``ceag.nn``);
  ``prunable_layers`` lists them; ``unsparsify`` gives a plain copy to export.
- ``magnitude_prune`` shrinks the masks by ``|w|``, layer-wise (the paper's default) or
  global; ``apply_masks_`` and ``mask_optimizer_state_`` keep pruned weights at exactly zero
  through training (``ceag.prune.magnitude``).
- ``storage``: ``sparsify(model, storage="compact")`` stores only the kept weights of the
  linear layers (``ceag.nn.CompactLinear``); ``"auto"`` turns a layer compact once
  ``magnitude_prune`` takes it below ``ceag.nn.COMPACT_BELOW_DENSITY``
  (``compact_below_threshold_``).
- ``GMPSchedule``: the gradual magnitude pruning cubic schedule (``ceag.prune.schedule``).
- ``sparsity_report``: per-layer and overall sparsity, printable or as a DataFrame.
- ``block_magnitude_mask`` prunes whole [bh, bw] blocks of a weight by their L2 norm, the
  block-structured masks whose empty tiles the Triton masked-linear kernels skip.
"""

from ceag.prune.block import block_magnitude_mask
from ceag.prune.magnitude import (
    LayerSparsity,
    SparsityReport,
    apply_masks_,
    compact_,
    compact_below_threshold_,
    magnitude_prune,
    mask_optimizer_state_,
    prunable_layers,
    sparsify,
    sparsity_report,
    unsparsify,
)
from ceag.prune.schedule import GMPSchedule

__all__ = [
    "GMPSchedule",
    "LayerSparsity",
    "SparsityReport",
    "apply_masks_",
    "block_magnitude_mask",
    "compact_",
    "compact_below_threshold_",
    "magnitude_prune",
    "mask_optimizer_state_",
    "prunable_layers",
    "sparsify",
    "sparsity_report",
    "unsparsify",
]
