"""Block-structured magnitude pruning: keep the weight blocks with the largest norms.

A random (unstructured) 90% mask leaves essentially no [32, 32] block empty, so a tiled GEMM
cannot skip anything; pruning whole blocks makes the sparsity visible to the kernels (the
Triton masked linear skips every all-zero mask tile: with blocks that are multiples of its
tiles, the work drops with the sparsity).
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["block_magnitude_mask"]


def block_magnitude_mask(
    weight: torch.Tensor,
    sparsity: float,
    block: tuple[int, int] = (32, 32),
    *,
    norm: str = "l2",
) -> torch.Tensor:
    """Bool mask of ``weight``'s shape that prunes the lowest-norm ``block``-sized blocks.

    Args:
        weight: [N, K] (any float dtype; norms are computed in float32, float64 kept).
        sparsity: fraction of blocks to prune, in [0, 1]; round(sparsity * num_blocks) blocks
            go (edge blocks, smaller when N or K is not a multiple of the block, count as one).
        block: (rows, columns) of a block.
        norm: "l2" (default: the Frobenius norm of the block, i.e. the weight energy the block
            carries) or "l1" (sum of absolute values).

    Ties are broken by block index (row-major), so the result is deterministic.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    if weight.is_meta:
        raise ValueError("weight is a meta tensor (no data): its block norms cannot be ranked")
    if weight.is_complex() or weight.dtype == torch.bool:
        raise TypeError(f"weight must be real-valued, got {weight.dtype}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a real number in [0, 1], got {sparsity!r}")
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if (
        not isinstance(block, (tuple, list))
        or len(block) != 2
        or not all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in block)
    ):
        raise TypeError(f"block must be two integer sizes (rows, columns), got {block!r}")
    bh, bw = (int(b) for b in block)
    if bh < 1 or bw < 1:
        raise ValueError(f"block must be two positive sizes, got {block}")
    if norm not in ("l2", "l1"):
        raise ValueError(f"norm must be 'l2' or 'l1', got {norm!r}")
    n, k = weight.shape
    nb, kb = math.ceil(n / bh), math.ceil(k / bw)
    w = weight.detach()
    w = w.abs() if norm == "l1" else w.square()
    w = w.to(torch.float64 if weight.dtype == torch.float64 else torch.float32)
    w = torch.nn.functional.pad(w, (0, kb * bw - k, 0, nb * bh - n))
    scores = w.reshape(nb, bh, kb, bw).sum(dim=(1, 3)).flatten()
    num_pruned = round(float(sparsity) * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=weight.device)
    if num_pruned > 0:
        # Stable ascending sort: among equal norms the earlier block is pruned first.
        order = torch.sort(scores, stable=True).indices
        keep[order[:num_pruned]] = False
    blocks = keep.reshape(nb, kb)
    mask = blocks.repeat_interleave(bh, dim=0).repeat_interleave(bw, dim=1)
    return mask[:n, :k].contiguous()
