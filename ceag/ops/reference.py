"""Plain-PyTorch references: the readable specification every backend is tested against.

Each function is differentiable through ordinary autograd and makes no claim to speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_linear(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ (weight * mask).T + bias, for x of shape [..., K].

    Pruned weights are absent, not multiplied by 0: a NaN/Inf weight where the mask is False
    reaches neither y nor the gradient of x (as in every kernel; NaN * 0 would be NaN).
    """
    return F.linear(x, torch.where(mask, weight, 0), bias)


def compact_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    in_features: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ W.T + bias for x [B, K], where W [N, K] holds ``values`` [nnz] at the CSR positions
    (row n: columns ``col_idx[row_ptr[n]:row_ptr[n+1]]``) and zeros elsewhere. Gather and
    index_add: O(nnz * B) memory, no dense W. Sums in float32 for 16-bit inputs (as the kernels)."""
    if x.shape[1] != in_features:
        raise ValueError(f"x must have in_features = {in_features} columns, got shape {tuple(x.shape)}")
    n = row_ptr.numel() - 1
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = torch.repeat_interleave(torch.arange(n, device=x.device), (row_ptr[1:] - row_ptr[:-1]).long())
    terms = x.to(acc)[:, col_idx.long()] * values.to(acc)  # [B, nnz]; gradients summed in acc too
    y = torch.zeros(x.shape[0], n, dtype=acc, device=x.device).index_add(1, rows, terms)
    return (y if bias is None else y + bias.to(acc)).to(x.dtype)


def group_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group cross-entropy sums and accuracy counts.

    Returns ``(loss_sum[G], correct[G] int64, count[G] int64, sample_correct[N] bool)``, with
    ``loss_sum`` float32, or float64 for float64 logits (as every backend).
    Samples whose target equals ``ignore_index`` count nowhere and are never correct.
    """
    keep = target != ignore_index
    safe_target = torch.where(keep, target, torch.zeros_like(target)).long()  # int32 ids too
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = F.cross_entropy(logits.to(acc), safe_target, reduction="none", label_smoothing=label_smoothing)
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    g = group.long()
    loss_sum = torch.zeros(num_groups, dtype=acc, device=logits.device)
    loss_sum = loss_sum.index_add(0, g, loss)
    if logits.shape[0] > 0:
        sample_correct = (logits.argmax(dim=1) == target) & keep
    else:
        sample_correct = torch.zeros(0, dtype=torch.bool, device=logits.device)
    correct = torch.bincount(g[sample_correct], minlength=num_groups)[:num_groups]
    count = torch.bincount(g[keep], minlength=num_groups)[:num_groups]
    return loss_sum, correct.long(), count.long(), sample_correct


def replay_buffer_update_(
    buffer: torch.Tensor,
    head: torch.Tensor,
    fill: torch.Tensor,
    group: torch.Tensor,
    values: torch.Tensor,
) -> None:
    """Push ``values[i]`` into ring buffer ``buffer[group[i]]`` in batch order, in place.

    ``head[g]`` is the slot the next value of group g goes to; ``fill[g]`` how many slots hold
    values (at most k). A group with more than k samples in the batch keeps its newest k.
    """
    k = buffer.shape[1]
    for g, v in zip(group.tolist(), values.tolist()):
        buffer[g, head[g]] = v
        head[g] = (head[g] + 1) % k
        fill[g] = min(int(fill[g]) + 1, k)
