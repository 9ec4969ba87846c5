"""Triton replay-buffer update: per-group ring buffers [G, k] filled in batch order, in place.

Registered as ``ceag::replay_buffer_update_triton_`` (torch.library.triton_op; the argument
list of ``ceag::replay_buffer_update_`` in csrc/ceag.cpp, semantics of
ceag.ops.reference.replay_buffer_update_): ``values[i]`` goes to ring ``group[i]``; a group
with n_g samples in the batch and more than k keeps its newest k.

Sample i of group g with rank r (samples of g before it in the batch) lands in slot
(head[g] + r) mod k and survives iff r >= n_g - k; afterwards head[g] += n_g (mod k) and
fill[g] = min(fill[g] + n_g, k). Two implementations, neither loops over groups or samples
in Python:

* N <= :data:`KERNEL_MAX_N` (training batches): two Triton launches. The first computes every
  sample's rank and n_g by comparing its group with all others in [BLOCK_I, BLOCK_J] tiles
  (O(N^2) comparisons, which for a few thousand samples is less work than a sort's launches)
  and writes the survivors; the second advances head and fill from each group's last sample
  (exactly one per group present, so no two programs touch the same group).
* larger N: vectorized torch ops: stable sort by group, rank = position - group start, and a
  scatter in which each dropped sample writes the value of the survivor that owns its slot
  (duplicate indices then carry equal values, so the result is deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ceag.kernels._interpreter import opaque_under_interpreter, traced

__all__ = ["KERNEL_MAX_N", "replay_buffer_update_triton_"]


#: Largest batch the O(N^2) Triton kernel takes; larger batches use the sort-based path.
KERNEL_MAX_N = 16384


@triton.jit
def _write_kernel(
    buffer_ptr,
    head_ptr,
    group_ptr,
    values_ptr,
    last_total_ptr,
    N,
    k,
    stride_bg,
    stride_bk,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = i < N
    g_i = tl.load(group_ptr + i, mask=i_ok, other=-1)
    rank = tl.zeros((BLOCK_I,), dtype=tl.int32)
    total = tl.zeros((BLOCK_I,), dtype=tl.int32)
    for j0 in range(0, N, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        g_j = tl.load(group_ptr + j, mask=j < N, other=-1)
        same = (g_i[:, None] == g_j[None, :]) & (j < N)[None, :]
        total += tl.sum(same.to(tl.int32), axis=1)
        rank += tl.sum((same & (j[None, :] < i[:, None])).to(tl.int32), axis=1)
    g_safe = tl.where(i_ok, g_i, 0).to(tl.int64)
    head = tl.load(head_ptr + g_safe, mask=i_ok, other=0)
    keep = i_ok & (rank >= total - k)
    slot = (head + rank) % k
    value = tl.load(values_ptr + i, mask=keep)
    tl.store(buffer_ptr + g_safe * stride_bg + slot * stride_bk, value, mask=keep)
    # The group's last sample reports n_g for the head/fill update (0 for the others).
    tl.store(last_total_ptr + i, tl.where(rank == total - 1, total, 0), mask=i_ok)


@triton.jit
def _state_kernel(head_ptr, fill_ptr, group_ptr, last_total_ptr, N, k, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    i_ok = i < N
    n_g = tl.load(last_total_ptr + i, mask=i_ok, other=0).to(tl.int64)
    last = i_ok & (n_g > 0)
    g = tl.load(group_ptr + i, mask=last, other=0).to(tl.int64)
    head = tl.load(head_ptr + g, mask=last, other=0)
    fill = tl.load(fill_ptr + g, mask=last, other=0)
    tl.store(head_ptr + g, (head + n_g) % k, mask=last)
    tl.store(fill_ptr + g, tl.minimum(fill + n_g, k), mask=last)


def _update_with_kernel(buffer, head, fill, group, values) -> None:
    n = group.shape[0]
    k = buffer.shape[1]
    # bool tensors go in as they are (Triton's *i1): a dtype view of the mutated buffer would
    # be written as a copy under inductor.
    buf, vals = buffer, values
    last_total = torch.empty(n, dtype=torch.int32, device=group.device)
    block_i = min(64, triton.next_power_of_2(n))
    block_j = min(128, triton.next_power_of_2(n))
    wrap_triton(_write_kernel)[(triton.cdiv(n, block_i),)](
        buf,
        head,
        group,
        vals,
        last_total,
        n,
        k,
        buf.stride(0),
        buf.stride(1),
        BLOCK_I=block_i,
        BLOCK_J=block_j,
        num_warps=4,
    )
    block = min(1024, triton.next_power_of_2(n))
    wrap_triton(_state_kernel)[(triton.cdiv(n, block),)](head, fill, group, last_total, n, k, BLOCK=block, num_warps=4)


def _update_with_sort(buffer, head, fill, group, values) -> None:
    """The same update with vectorized torch ops (any N; no data-dependent shapes)."""
    num_groups, k = buffer.shape
    n = group.shape[0]
    g = group.long()
    order = torch.sort(g, stable=True).indices  # by group, batch order within a group
    gs = g[order]
    counts = torch.bincount(g, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    n_g = counts[gs]
    rank = torch.arange(n, device=g.device) - starts[gs]
    slot = (head[gs] + rank) % k
    # A dropped sample (rank < n_g - k) writes the value of the survivor that owns its slot:
    # the largest rank congruent to its own mod k.
    owner = starts[gs] + rank + k * torch.div(n_g - 1 - rank, k, rounding_mode="floor")
    buffer.index_put_((gs, slot), values[order][owner])
    head.copy_((head + counts) % k)
    fill.copy_(torch.clamp(fill + counts, max=k))


def update(buffer, head, fill, group, values, *, use_kernel: bool | None = None) -> None:
    """In-place update; ``use_kernel`` forces a path (tests), default by :data:`KERNEL_MAX_N`."""
    n = group.shape[0]
    if n == 0 or traced(buffer, head, fill, group, values):
        return
    if values.dtype != buffer.dtype:
        values = values.to(buffer.dtype)
    if use_kernel is None:
        use_kernel = n <= KERNEL_MAX_N
    if use_kernel:
        _update_with_kernel(buffer, head, fill, group, values)
    else:
        _update_with_sort(buffer, head, fill, group, values)


@triton_op("ceag::replay_buffer_update_triton_", mutates_args={"buffer", "head", "fill"})
def replay_buffer_update_triton_(
    buffer: torch.Tensor,
    head: torch.Tensor,
    fill: torch.Tensor,
    group: torch.Tensor,
    values: torch.Tensor,
) -> None:
    update(buffer, head, fill, group, values)


opaque_under_interpreter(replay_buffer_update_triton_)
