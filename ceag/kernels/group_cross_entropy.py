"""Triton segmented per-group cross-entropy: one sweep over the logits, per-group sums.

Registered as ``ceag::group_cross_entropy_triton``, ``ceag::group_cross_entropy_backward_triton``
and ``ceag::weighted_group_cross_entropy_triton`` (torch.library.triton_op, the argument lists
of the C++ ops in csrc/ceag.cpp; semantics of ceag.ops.reference.group_cross_entropy).

Forward kernel: a program takes a block of BLOCK_R rows and sweeps their classes in chunks of
BLOCK_C (so C up to 100,000 never has to fit in registers) with an online softmax: running
max m, running sum s of exp(x - m) rescaled when m grows, and the running argmax (a chunk's
first maximal column replaces the running one only when strictly larger: the first maximum
wins, as in torch.argmax). lse = m + log(s); loss = lse - (1-ls) x_t - ls mean(x) (torch's
label smoothing); ignore_index rows count nowhere. Accumulation is fp32 (fp64 for fp64
logits); bf16/fp16 logits are read as is and upcast in registers.

Per-group sums, chosen by G (:data:`PARTIALS_MAX_GROUPS`):

* G <= PARTIALS_MAX_GROUPS: deterministic. A fixed number of programs (a few per SM) each
  loop over their row blocks, accumulate loss/correct/count per group in registers (a
  [BLOCK_R, G] one-hot product per row block) and write one private row of a [P, G]
  partials buffer; a second kernel reduces the rows in a fixed order. Same bits every run.
* larger G: the one-hot tile would cost more than the row itself, so each row adds to its
  group with fp32 (fp64) atomics; the loss sums may then differ in the last bits from run to
  run (the integer counts never do).

No path uses bf16/fp16 atomics (the sums are fp32 or fp64), so every path also runs under
TRITON_INTERPRET=1.

The weighted op writes grad_logits = (softmax - smoothed one-hot) * group_weight[g] in the
same kernel, in a second loop over the row block's chunks (which the first loop has just
brought into L1/L2). The backward kernel recomputes softmax from the saved lse on a 2-D grid
of (row block, class chunk) tiles.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ceag.kernels._interpreter import INTERPRET, opaque_under_interpreter, traced

__all__ = [
    "PARTIALS_MAX_GROUPS",
    "group_cross_entropy_triton",
    "group_cross_entropy_backward_triton",
    "weighted_group_cross_entropy_triton",
]


#: Largest G reduced through deterministic per-program partials; above it, atomics.
PARTIALS_MAX_GROUPS = 256
#: Largest class chunk and largest row-block tile (elements) per program.
MAX_BLOCK_C = 1024 if INTERPRET else 4096
MAX_TILE = 4096 if INTERPRET else 8192
MAX_BLOCK_R = 64


def _blocks(n: int, c: int, block_c: int | None) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) for logits [n, c]; ``block_c`` forces the chunk size."""
    bc = block_c or min(triton.next_power_of_2(c), MAX_BLOCK_C)
    br = max(1, min(MAX_TILE // bc, MAX_BLOCK_R, triton.next_power_of_2(max(n, 1))))
    warps = 8 if br * bc >= 4096 else 4
    return br, bc, warps


def _num_partial_programs(device: torch.device, num_blocks: int) -> int:
    if device.type == "cuda":
        slots = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:  # interpreter: a few programs, each looping over several row blocks
        slots = 3
    return max(1, min(num_blocks, slots))


# --------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _forward_kernel(
    logits_ptr,
    target_ptr,
    group_ptr,
    weight_ptr,
    loss_ptr,
    correct_ptr,
    count_ptr,
    sample_correct_ptr,
    lse_ptr,
    grad_ptr,
    N,
    C,
    G,
    num_blocks,
    stride_ln,
    stride_lc,
    stride_gn,
    stride_gc,
    stride_w,
    label_smoothing,
    ignore_index,
    ATOMIC: tl.constexpr,
    WEIGHTED: tl.constexpr,
    HAS_LS: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    r_local = tl.arange(0, BLOCK_R)
    cols_local = tl.arange(0, BLOCK_C)
    if not ATOMIC:
        g_ids = tl.arange(0, BLOCK_G)
        part_loss = tl.zeros((BLOCK_G,), dtype=ACC)
        part_correct = tl.zeros((BLOCK_G,), dtype=tl.int32)
        part_count = tl.zeros((BLOCK_G,), dtype=tl.int32)
    for blk in range(pid, num_blocks, num_programs):
        rows = blk * BLOCK_R + r_local
        r_ok = rows < N
        rows64 = rows.to(tl.int64)
        target = tl.load(target_ptr + rows, mask=r_ok, other=ignore_index)
        group = tl.load(group_ptr + rows, mask=r_ok, other=0)
        keep = r_ok & (target != ignore_index)
        safe_t = tl.where(keep, target, 0)
        row_ptr = logits_ptr + rows64 * stride_ln

        run_max = tl.full((BLOCK_R,), float("-inf"), dtype=ACC)
        run_sum = tl.zeros((BLOCK_R,), dtype=ACC)
        run_arg = tl.zeros((BLOCK_R,), dtype=tl.int32)
        first_nan = tl.full((BLOCK_R,), 2147483647, dtype=tl.int32)  # torch.argmax: a NaN is the max
        sum_x = tl.zeros((BLOCK_R,), dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + cols_local
            c_ok = cols < C
            x = tl.load(
                row_ptr[:, None] + cols[None, :].to(tl.int64) * stride_lc,
                mask=r_ok[:, None] & c_ok[None, :],
                other=float("-inf"),
            ).to(ACC)
            x = tl.where(r_ok[:, None], x, 0.0)  # rows past N: finite, never stored
            chunk_max = tl.max(x, axis=1)
            chunk_arg = tl.min(tl.where(x == chunk_max[:, None], cols[None, :], 2147483647), axis=1)
            run_arg = tl.where(chunk_max > run_max, chunk_arg, run_arg)  # first max wins
            first_nan = tl.minimum(first_nan, tl.min(tl.where(x != x, cols[None, :], 2147483647), axis=1))
            new_max = tl.maximum(run_max, chunk_max)
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(x - new_max[:, None]), axis=1)
            run_max = new_max
            if HAS_LS:
                sum_x += tl.sum(tl.where(c_ok[None, :], x, 0.0), axis=1)
        lse = run_max + tl.log(run_sum)
        x_t = tl.load(row_ptr + safe_t.to(tl.int64) * stride_lc, mask=keep, other=0.0).to(ACC)
        if HAS_LS:
            loss = lse - (1.0 - label_smoothing) * x_t - label_smoothing * sum_x / C
        else:
            loss = lse - x_t
        loss = tl.where(keep, loss, 0.0)
        run_arg = tl.where(first_nan < 2147483647, first_nan, run_arg)
        correct = keep & (run_arg == safe_t)
        tl.store(lse_ptr + rows, lse, mask=r_ok)
        tl.store(sample_correct_ptr + rows, correct, mask=r_ok)

        if WEIGHTED:
            w = tl.load(weight_ptr + group * stride_w, mask=keep, other=0.0).to(ACC)
            w_true = (1.0 - label_smoothing) * w
            w_smooth = label_smoothing * w / C
            grow_ptr = grad_ptr + rows64 * stride_gn
            for c0 in range(0, C, BLOCK_C):
                cols = c0 + cols_local
                c_ok = cols < C
                tile_ok = r_ok[:, None] & c_ok[None, :]
                x = tl.load(row_ptr[:, None] + cols[None, :].to(tl.int64) * stride_lc, mask=tile_ok, other=0.0).to(ACC)
                grad = tl.exp(x - lse[:, None]) * w[:, None] - w_smooth[:, None]
                grad -= tl.where(cols[None, :] == safe_t[:, None], w_true[:, None], 0.0)
                grad = tl.where(keep[:, None], grad, 0.0)
                tl.store(
                    grow_ptr[:, None] + cols[None, :].to(tl.int64) * stride_gc,
                    grad.to(grad_ptr.dtype.element_ty),
                    mask=tile_ok,
                )

        if ATOMIC:
            tl.atomic_add(loss_ptr + group, loss, mask=keep)
            tl.atomic_add(correct_ptr + group, tl.full((BLOCK_R,), 1, tl.int64), mask=correct)
            tl.atomic_add(count_ptr + group, tl.full((BLOCK_R,), 1, tl.int64), mask=keep)
        else:
            hit = group[:, None] == g_ids[None, :]
            part_loss += tl.sum(tl.where(hit, loss[:, None], 0.0), axis=0)
            part_correct += tl.sum((hit & correct[:, None]).to(tl.int32), axis=0)
            part_count += tl.sum((hit & keep[:, None]).to(tl.int32), axis=0)
    if not ATOMIC:
        tl.store(loss_ptr + pid * BLOCK_G + g_ids, part_loss)
        tl.store(correct_ptr + pid * BLOCK_G + g_ids, part_correct)
        tl.store(count_ptr + pid * BLOCK_G + g_ids, part_count)


@triton.jit
def _reduce_partials_kernel(
    part_loss_ptr,
    part_correct_ptr,
    part_count_ptr,
    loss_ptr,
    correct_ptr,
    count_ptr,
    P,
    G,
    BLOCK_P: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """Sum the [P, BLOCK_G] partials over P in a fixed order (deterministic)."""
    g_ids = tl.arange(0, BLOCK_G)
    loss = tl.zeros((BLOCK_G,), dtype=part_loss_ptr.dtype.element_ty)
    correct = tl.zeros((BLOCK_G,), dtype=tl.int64)
    count = tl.zeros((BLOCK_G,), dtype=tl.int64)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        offs = p[:, None] * BLOCK_G + g_ids[None, :]
        ok = (p < P)[:, None]
        loss += tl.sum(tl.load(part_loss_ptr + offs, mask=ok, other=0.0), axis=0)
        correct += tl.sum(tl.load(part_correct_ptr + offs, mask=ok, other=0).to(tl.int64), axis=0)
        count += tl.sum(tl.load(part_count_ptr + offs, mask=ok, other=0).to(tl.int64), axis=0)
    g_ok = g_ids < G
    tl.store(loss_ptr + g_ids, loss, mask=g_ok)
    tl.store(correct_ptr + g_ids, correct, mask=g_ok)
    tl.store(count_ptr + g_ids, count, mask=g_ok)


@triton.jit
def _backward_kernel(
    grad_sum_ptr,
    logits_ptr,
    target_ptr,
    group_ptr,
    lse_ptr,
    grad_ptr,
    N,
    C,
    stride_s,
    stride_ln,
    stride_lc,
    stride_gn,
    stride_gc,
    label_smoothing,
    ignore_index,
    IS_FP64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """grad_logits = (softmax - smoothed one-hot) * grad_loss_sum[group], one tile per program."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    r_ok = rows < N
    c_ok = cols < C
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    target = tl.load(target_ptr + rows, mask=r_ok, other=ignore_index)
    group = tl.load(group_ptr + rows, mask=r_ok, other=0)
    keep = r_ok & (target != ignore_index)
    w = tl.load(grad_sum_ptr + group * stride_s, mask=keep, other=0.0).to(ACC)
    lse = tl.load(lse_ptr + rows, mask=r_ok, other=0.0).to(ACC)
    tile_ok = r_ok[:, None] & c_ok[None, :]
    x = tl.load(logits_ptr + rows64[:, None] * stride_ln + cols64[None, :] * stride_lc, mask=tile_ok, other=0.0).to(ACC)
    grad = tl.exp(x - lse[:, None]) * w[:, None] - (label_smoothing * w / C)[:, None]
    grad -= tl.where(cols[None, :] == target[:, None], ((1.0 - label_smoothing) * w)[:, None], 0.0)
    grad = tl.where(keep[:, None], grad, 0.0)
    tl.store(
        grad_ptr + rows64[:, None] * stride_gn + cols64[None, :] * stride_gc,
        grad.to(grad_ptr.dtype.element_ty),
        mask=tile_ok,
    )


# --------------------------------------------------------------------------------------------
# Host side (make_fx-traceable: shapes only)


def _acc_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def forward(
    logits,
    target,
    group,
    num_groups,
    label_smoothing,
    ignore_index,
    group_weight=None,
    *,
    block_c=None,
    atomic=None,
):
    """(loss_sum, correct, count, sample_correct, lse[, grad_logits]).

    ``block_c`` (class chunk) and ``atomic`` (force the atomics or the partials path) are
    test overrides; by default the path follows :data:`PARTIALS_MAX_GROUPS`.
    """
    n, c = logits.shape
    g = num_groups
    dev = logits.device
    acc = _acc_dtype(logits)
    weighted = group_weight is not None
    if atomic is None:
        atomic = g > PARTIALS_MAX_GROUPS
    sample_correct = torch.empty(n, dtype=torch.bool, device=dev)
    lse = torch.empty(n, dtype=acc, device=dev)
    grad = torch.empty((n, c), dtype=logits.dtype, device=dev) if weighted else lse
    loss_sum = torch.zeros(g, dtype=acc, device=dev)
    correct = torch.zeros(g, dtype=torch.int64, device=dev)
    count = torch.zeros(g, dtype=torch.int64, device=dev)
    outs = (loss_sum, correct, count, sample_correct, lse)
    if n == 0 or traced(logits, target, group, group_weight):
        return (*outs, grad) if weighted else outs

    block_r, block_c, warps = _blocks(n, c, block_c)
    num_blocks = triton.cdiv(n, block_r)
    if atomic:
        programs, block_g = num_blocks, 1
        dest = (loss_sum, correct, count)
    else:
        programs = _num_partial_programs(dev, num_blocks)
        block_g = triton.next_power_of_2(g)
        dest = (
            torch.empty((programs, block_g), dtype=acc, device=dev),
            torch.empty((programs, block_g), dtype=torch.int32, device=dev),
            torch.empty((programs, block_g), dtype=torch.int32, device=dev),
        )
    weight = group_weight if weighted else lse
    wrap_triton(_forward_kernel)[(programs,)](
        logits,
        target,
        group,
        weight,
        *dest,
        sample_correct,
        lse,
        grad,  # a dtype view would be copied, not written, under inductor
        n,
        c,
        g,
        num_blocks,
        logits.stride(0),
        logits.stride(1),
        grad.stride(0) if weighted else 0,
        grad.stride(1) if weighted else 0,
        weight.stride(0),
        float(label_smoothing),
        int(ignore_index),
        ATOMIC=atomic,
        WEIGHTED=weighted,
        HAS_LS=label_smoothing > 0.0,
        IS_FP64=acc == torch.float64,
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        BLOCK_G=block_g,
        num_warps=warps,
    )
    if not atomic:
        block_p = max(1, min(triton.next_power_of_2(programs), max(1, 4096 // block_g)))
        wrap_triton(_reduce_partials_kernel)[(1,)](
            *dest,
            loss_sum,
            correct,
            count,
            programs,
            g,
            BLOCK_P=block_p,
            BLOCK_G=block_g,
            num_warps=4,
        )
    return (*outs, grad) if weighted else outs


def backward(grad_loss_sum, logits, target, group, lse, label_smoothing, ignore_index, *, block_c=None) -> torch.Tensor:
    n, c = logits.shape
    grad = torch.empty((n, c), dtype=logits.dtype, device=logits.device)
    if n == 0 or traced(grad_loss_sum, logits, target, group, lse):
        return grad
    block_r, block_c, warps = _blocks(n, c, block_c)
    grid = (triton.cdiv(n, block_r), triton.cdiv(c, block_c))
    wrap_triton(_backward_kernel)[grid](
        grad_loss_sum,
        logits,
        target,
        group,
        lse,
        grad,
        n,
        c,
        grad_loss_sum.stride(0),
        logits.stride(0),
        logits.stride(1),
        grad.stride(0),
        grad.stride(1),
        float(label_smoothing),
        int(ignore_index),
        IS_FP64=_acc_dtype(logits) == torch.float64,
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        num_warps=warps,
    )
    return grad


# --------------------------------------------------------------------------------------------
# The ops


@triton_op("ceag::group_cross_entropy_triton", mutates_args=())
def group_cross_entropy_triton(
    logits: torch.Tensor,
    target: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    label_smoothing: float,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return forward(logits, target, group, num_groups, label_smoothing, ignore_index)


@triton_op("ceag::group_cross_entropy_backward_triton", mutates_args=())
def group_cross_entropy_backward_triton(
    grad_loss_sum: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    group: torch.Tensor,
    lse: torch.Tensor,
    label_smoothing: float,
    ignore_index: int,
) -> torch.Tensor:
    return backward(grad_loss_sum, logits, target, group, lse, label_smoothing, ignore_index)


@triton_op("ceag::weighted_group_cross_entropy_triton", mutates_args=())
def weighted_group_cross_entropy_triton(
    logits: torch.Tensor,
    target: torch.Tensor,
    group: torch.Tensor,
    group_weight: torch.Tensor,
    label_smoothing: float,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return forward(logits, target, group, group_weight.shape[0], label_smoothing, ignore_index, group_weight)


# Opaque to the Triton interpreter's tracing; the fake kernels and autograd of these ops are
# registered by their OpFamily (ceag/ops/group_cross_entropy.py) when dispatch first routes
# to "triton", so this module imports nothing from the layer above.
opaque_under_interpreter(
    group_cross_entropy_triton,
    group_cross_entropy_backward_triton,
    weighted_group_cross_entropy_triton,
)
