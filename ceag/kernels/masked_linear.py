"""Triton masked linear: ``y = x @ (W*M).T + b`` and its two gradients, W*M never in memory.

Registered as ``ceag::masked_linear_triton``, ``ceag::masked_linear_grad_input_triton`` and
``ceag::masked_linear_grad_weight_triton`` (torch.library.triton_op, same argument lists as
the C++ ops in csrc/ceag.cpp; the csr/csc layout arguments are accepted and ignored: these
kernels read the dense mask).

Kernel structure (all three are tiled GEMMs with fp32 accumulation, fp64 for fp64):

* forward, tile [BLOCK_B, BLOCK_N] of y: loops over the K-tiles of its output-column block,
  loading an x tile, a W tile and the matching mask tile (the bool mask viewed as uint8) and
  zeroing W where the mask is 0 in registers before ``tl.dot``;
* grad_x = grad_y @ (W*M), tile [BLOCK_B, BLOCK_K] of grad_x: the same, reducing over N;
* grad_W = (grad_y.T @ x) * M, tile [BLOCK_N, BLOCK_K] of grad_W: reduces over the batch and
  applies the mask in the epilogue, so grad_W is exactly zero where the mask is 0.

Tile skipping: an occupancy bitmap of the mask at the kernel's (BLOCK_N, BLOCK_K) tile
granularity (1 = the mask block has a kept entry) is turned into, per output block, the
ascending list of non-empty reduction tiles and its length; forward and grad_x loop over that
list only (indirect tile offsets, so the loop still pipelines), grad_W runs zero batch
iterations for an empty tile and stores its zeros. The bitmap and lists are cached per mask
tensor (keyed on its identity, data_ptr and ``_version``, so an in-place edit of the mask
invalidates them) outside of tracing; under torch.compile they are recomputed in the graph.
Only block-structured masks have empty tiles (a random 90% mask has essentially none):
see :func:`ceag.prune.block_magnitude_mask`.

The masked dimensions use fixed tiles (GPU: forward 128x64 of (N, K), grad_x 64x128,
grad_W 128x128; all align with a 128x128 block grid), so the lists are known before the
launch; the autotuner picks the batch tile, warps and stages.

Precision: fp32 inputs use IEEE fp32 products unless ``torch.backends.cuda.matmul.allow_tf32``
is set (then TF32 tensor cores, like torch's own fp32 matmul on the same setting); bf16 and
fp16 use tensor cores with fp32 accumulation; outputs are cast back to the input dtype.
fp64 (gradcheck) multiplies on the CUDA cores with 16x16 tiles: Triton's fp64 MMA lowering
rejects these operand layouts.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ceag.kernels._interpreter import INTERPRET, opaque_under_interpreter, traced
from ceag.kernels.mask_tiles import _mask_tiles, clear_cache, occupancy, tile_lists

__all__ = [
    "masked_linear_triton",
    "masked_linear_grad_input_triton",
    "masked_linear_grad_weight_triton",
    "clear_cache",
    "occupancy",
    "tile_lists",
]


# (BLOCK_N, BLOCK_K) of each kernel, the mask granularity of its tile skipping; fp64 (CUDA-core
# products, see _mma) uses small tiles. Under the interpreter small tiles keep test shapes small
# while still spanning several tiles.
if INTERPRET:
    TILES = {"fwd": (16, 16), "grad_input": (16, 16), "grad_weight": (16, 16)}
    TILES_FP64 = TILES
else:
    TILES = {"fwd": (128, 64), "grad_input": (64, 128), "grad_weight": (128, 128)}
    TILES_FP64 = {"fwd": (16, 16), "grad_input": (16, 16), "grad_weight": (16, 16)}


#: CEAG_TRITON_AUTOTUNE=0 runs one fixed config instead of autotuning each new (B, N, K): the
#: test suite's many small shapes would otherwise compile and time every config for each.
AUTOTUNE = os.environ.get("CEAG_TRITON_AUTOTUNE", "1") != "0"


def _configs(fp64: bool = False) -> list[triton.Config]:
    """Autotuned: the batch tile BLOCK_B, warps and stages (the masked tiles are fixed)."""
    if INTERPRET or fp64:
        stages = 1 if INTERPRET else 2
        return [triton.Config({"BLOCK_B": 16, "GROUP": 4}, num_warps=4, num_stages=stages)]
    if not AUTOTUNE:
        return [triton.Config({"BLOCK_B": 64, "GROUP": 8}, num_warps=4, num_stages=3)]
    return [
        triton.Config({"BLOCK_B": bb, "GROUP": 8}, num_warps=w, num_stages=s)
        for bb in (64, 128)
        for w in (4, 8)
        for s in (3, 4, 5)
    ]


def _tile(kind: str, dtype: torch.dtype, tile: tuple[int, int] | None) -> tuple[int, int]:
    return tile or (TILES_FP64 if dtype == torch.float64 else TILES)[kind]


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return "ieee" if dtype == torch.float64 else "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    """Cast bf16 tiles to fp32 before tl.dot: only under the interpreter, which stores bf16 as
    raw uint16 and has no bf16 arithmetic besides casts. Exact either way (bf16 products are
    exact in fp32); compiled kernels keep bf16 operands for the tensor cores."""
    return INTERPRET and dtype == torch.bfloat16


def _as_uint8(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


# --------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _swizzle(pid, num_a, num_b, GROUP: tl.constexpr):
    """Grouped program order: GROUP consecutive row blocks share column blocks (L2 reuse)."""
    in_group = GROUP * num_b
    group_id = pid // in_group
    first = group_id * GROUP
    size = tl.minimum(num_a - first, GROUP)
    pid_a = first + (pid % in_group) % size
    pid_b = (pid % in_group) // size
    return pid_a, pid_b


@triton.jit
def _mma(a, b, acc, IS_FP64: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b. fp64 multiplies on the CUDA cores (broadcast and sum: Triton's fp64 MMA
    lowering rejects these operand layouts); bf16 is upcast first under the interpreter."""
    if IS_FP64:
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:
        if UPCAST:  # the interpreter has no bf16 arithmetic (see _upcast)
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def _forward_kernel_jit(
    x_ptr,
    w_ptr,
    m_ptr,
    bias_ptr,
    y_ptr,
    count_ptr,
    index_ptr,
    B,
    N,
    K,
    num_kb,
    stride_xb,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_mn,
    stride_mk,
    stride_yb,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    IS_FP64: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_B: tl.constexpr,
    GROUP: tl.constexpr,
):
    pid_b, pid_n = _swizzle(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.cdiv(N, BLOCK_N), GROUP)
    offs_b = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    b_ok = offs_b < B
    n_ok = offs_n < N
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float64 if IS_FP64 else tl.float32)
    count = tl.load(count_ptr + pid_n)
    for i in range(0, count):
        kb = tl.load(index_ptr + pid_n * num_kb + i)
        offs_k = kb * BLOCK_K + rk
        k_ok = offs_k < K
        a = tl.load(
            x_ptr + offs_b[:, None] * stride_xb + offs_k[None, :] * stride_xk,
            mask=b_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        wk_ok = k_ok[:, None] & n_ok[None, :]
        w = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk, mask=wk_ok, other=0.0)
        m = tl.load(m_ptr + offs_n[None, :] * stride_mn + offs_k[:, None] * stride_mk, mask=wk_ok, other=0)
        w = tl.where(m != 0, w, tl.zeros_like(w))
        acc = _mma(a, w, acc, IS_FP64, PRECISION, UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(acc.dtype)[None, :]
    tl.store(
        y_ptr + offs_b[:, None] * stride_yb + offs_n[None, :] * stride_yn,
        acc.to(y_ptr.dtype.element_ty),
        mask=b_ok[:, None] & n_ok[None, :],
    )


@triton.jit
def _grad_input_kernel_jit(
    gy_ptr,
    w_ptr,
    m_ptr,
    gx_ptr,
    count_ptr,
    index_ptr,
    B,
    N,
    K,
    num_nb,
    stride_gb,
    stride_gn,
    stride_wn,
    stride_wk,
    stride_mn,
    stride_mk,
    stride_xb,
    stride_xk,
    IS_FP64: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_B: tl.constexpr,
    GROUP: tl.constexpr,
):
    pid_b, pid_k = _swizzle(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.cdiv(K, BLOCK_K), GROUP)
    offs_b = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    b_ok = offs_b < B
    k_ok = offs_k < K
    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float64 if IS_FP64 else tl.float32)
    count = tl.load(count_ptr + pid_k)
    for i in range(0, count):
        nb = tl.load(index_ptr + pid_k * num_nb + i)
        offs_n = nb * BLOCK_N + rn
        n_ok = offs_n < N
        a = tl.load(
            gy_ptr + offs_b[:, None] * stride_gb + offs_n[None, :] * stride_gn,
            mask=b_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        nk_ok = n_ok[:, None] & k_ok[None, :]
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk, mask=nk_ok, other=0.0)
        m = tl.load(m_ptr + offs_n[:, None] * stride_mn + offs_k[None, :] * stride_mk, mask=nk_ok, other=0)
        w = tl.where(m != 0, w, tl.zeros_like(w))
        acc = _mma(a, w, acc, IS_FP64, PRECISION, UPCAST)
    tl.store(
        gx_ptr + offs_b[:, None] * stride_xb + offs_k[None, :] * stride_xk,
        acc.to(gx_ptr.dtype.element_ty),
        mask=b_ok[:, None] & k_ok[None, :],
    )


@triton.jit
def _grad_weight_kernel_jit(
    gy_ptr,
    x_ptr,
    m_ptr,
    gw_ptr,
    occ_ptr,
    B,
    N,
    K,
    num_kb,
    stride_gb,
    stride_gn,
    stride_xb,
    stride_xk,
    stride_mn,
    stride_mk,
    stride_wn,
    stride_wk,
    IS_FP64: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_B: tl.constexpr,
    GROUP: tl.constexpr,
):
    pid_n, pid_k = _swizzle(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(K, BLOCK_K), GROUP)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rb = tl.arange(0, BLOCK_B)
    n_ok = offs_n < N
    k_ok = offs_k < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float64 if IS_FP64 else tl.float32)
    # An empty mask tile runs no batch iteration and stores its zeros.
    occupied = tl.load(occ_ptr + pid_n * num_kb + pid_k)
    steps = tl.where(occupied != 0, tl.cdiv(B, BLOCK_B), 0)
    for i in range(0, steps):
        offs_b = (i * BLOCK_B + rb).to(tl.int64)
        b_ok = offs_b < B
        a = tl.load(  # grad_y.T tile [BLOCK_N, BLOCK_B]
            gy_ptr + offs_b[None, :] * stride_gb + offs_n[:, None] * stride_gn,
            mask=n_ok[:, None] & b_ok[None, :],
            other=0.0,
        )
        xt = tl.load(
            x_ptr + offs_b[:, None] * stride_xb + offs_k[None, :] * stride_xk,
            mask=b_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        acc = _mma(a, xt, acc, IS_FP64, PRECISION, UPCAST)
    nk_ok = n_ok[:, None] & k_ok[None, :]
    m = tl.load(m_ptr + offs_n[:, None] * stride_mn + offs_k[None, :] * stride_mk, mask=nk_ok, other=0)
    acc = tl.where(m != 0, acc, tl.zeros_like(acc))
    tl.store(
        gw_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
        acc.to(gw_ptr.dtype.element_ty),
        mask=nk_ok,
    )


_KEY = ["B", "N", "K"]
_forward_kernel = triton.autotune(configs=_configs(), key=_KEY)(_forward_kernel_jit)
_forward_kernel_fp64 = triton.autotune(configs=_configs(True), key=_KEY)(_forward_kernel_jit)
_grad_input_kernel = triton.autotune(configs=_configs(), key=_KEY)(_grad_input_kernel_jit)
_grad_input_kernel_fp64 = triton.autotune(configs=_configs(True), key=_KEY)(_grad_input_kernel_jit)
_grad_weight_kernel = triton.autotune(configs=_configs(), key=_KEY)(_grad_weight_kernel_jit)
_grad_weight_kernel_fp64 = triton.autotune(configs=_configs(True), key=_KEY)(_grad_weight_kernel_jit)


# --------------------------------------------------------------------------------------------
# Host side (make_fx-traceable: shapes only, no data-dependent Python)


def forward(x, weight, mask, bias=None, *, tile=None, skip=True) -> torch.Tensor:
    """y = x @ (weight*mask).T + bias for x [B, K]. ``tile``/``skip``: test overrides."""
    block_n, block_k = _tile("fwd", x.dtype, tile)
    b, k = x.shape
    n = weight.shape[0]
    y = torch.empty((b, n), dtype=x.dtype, device=x.device)
    if b == 0 or n == 0 or traced(x, weight, mask, bias):
        return y
    count, index = _mask_tiles(mask, block_n, block_k, "fwd", skip)
    m = _as_uint8(mask)
    grid = lambda meta: (triton.cdiv(b, meta["BLOCK_B"]) * triton.cdiv(n, block_n),)  # noqa: E731
    kernel = _forward_kernel_fp64 if x.dtype == torch.float64 else _forward_kernel
    wrap_triton(kernel)[grid](
        x,
        weight,
        m,
        bias if bias is not None else y,
        y,
        count,
        index,
        b,
        n,
        k,
        index.shape[1],
        x.stride(0),
        x.stride(1),
        weight.stride(0),
        weight.stride(1),
        m.stride(0),
        m.stride(1),
        y.stride(0),
        y.stride(1),
        HAS_BIAS=bias is not None,
        IS_FP64=x.dtype == torch.float64,
        PRECISION=_precision(x.dtype),
        UPCAST=_upcast(x.dtype),
        BLOCK_N=block_n,
        BLOCK_K=block_k,
    )
    return y


def grad_input(grad_y, weight, mask, *, tile=None, skip=True) -> torch.Tensor:
    """grad_x = grad_y @ (weight*mask) for grad_y [B, N]."""
    block_n, block_k = _tile("grad_input", grad_y.dtype, tile)
    b, n = grad_y.shape
    k = weight.shape[1]
    gx = torch.empty((b, k), dtype=grad_y.dtype, device=grad_y.device)
    if b == 0 or k == 0 or traced(grad_y, weight, mask):
        return gx
    count, index = _mask_tiles(mask, block_n, block_k, "grad_input", skip)
    m = _as_uint8(mask)
    grid = lambda meta: (triton.cdiv(b, meta["BLOCK_B"]) * triton.cdiv(k, block_k),)  # noqa: E731
    kernel = _grad_input_kernel_fp64 if grad_y.dtype == torch.float64 else _grad_input_kernel
    wrap_triton(kernel)[grid](
        grad_y,
        weight,
        m,
        gx,
        count,
        index,
        b,
        n,
        k,
        index.shape[1],
        grad_y.stride(0),
        grad_y.stride(1),
        weight.stride(0),
        weight.stride(1),
        m.stride(0),
        m.stride(1),
        gx.stride(0),
        gx.stride(1),
        IS_FP64=grad_y.dtype == torch.float64,
        PRECISION=_precision(grad_y.dtype),
        UPCAST=_upcast(grad_y.dtype),
        BLOCK_N=block_n,
        BLOCK_K=block_k,
    )
    return gx


def grad_weight(grad_y, x, mask, *, tile=None, skip=True) -> torch.Tensor:
    """grad_W = (grad_y.T @ x) * mask, exactly zero where the mask is 0."""
    block_n, block_k = _tile("grad_weight", x.dtype, tile)
    b, n = grad_y.shape
    k = x.shape[1]
    gw = torch.empty((n, k), dtype=x.dtype, device=x.device)
    if n == 0 or k == 0 or traced(grad_y, x, mask):
        return gw
    (occ,) = _mask_tiles(mask, block_n, block_k, "grad_weight", skip)
    m = _as_uint8(mask)
    grid = (triton.cdiv(n, block_n) * triton.cdiv(k, block_k),)
    kernel = _grad_weight_kernel_fp64 if x.dtype == torch.float64 else _grad_weight_kernel
    wrap_triton(kernel)[grid](
        grad_y,
        x,
        m,
        gw,
        occ,
        b,
        n,
        k,
        occ.shape[1],
        grad_y.stride(0),
        grad_y.stride(1),
        x.stride(0),
        x.stride(1),
        m.stride(0),
        m.stride(1),
        gw.stride(0),
        gw.stride(1),
        IS_FP64=x.dtype == torch.float64,
        PRECISION=_precision(x.dtype),
        UPCAST=_upcast(x.dtype),
        BLOCK_N=block_n,
        BLOCK_K=block_k,
    )
    return gw


# --------------------------------------------------------------------------------------------
# The ops (schemas as the C++ ops; csr/csc arguments accepted and ignored)


@triton_op("ceag::masked_linear_triton", mutates_args=())
def masked_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    bias: torch.Tensor | None,
    csr_ptr: torch.Tensor | None,
    csr_idx: torch.Tensor | None,
    csc_ptr: torch.Tensor | None,
    csc_idx: torch.Tensor | None,
) -> torch.Tensor:
    return forward(x, weight, mask, bias)


@triton_op("ceag::masked_linear_grad_input_triton", mutates_args=())
def masked_linear_grad_input_triton(
    grad_y: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    csc_ptr: torch.Tensor | None,
    csc_idx: torch.Tensor | None,
) -> torch.Tensor:
    return grad_input(grad_y, weight, mask)


@triton_op("ceag::masked_linear_grad_weight_triton", mutates_args=())
def masked_linear_grad_weight_triton(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    mask: torch.Tensor,
    csr_ptr: torch.Tensor | None,
    csr_idx: torch.Tensor | None,
) -> torch.Tensor:
    return grad_weight(grad_y, x, mask)


# Opaque to the Triton interpreter's tracing; the fake kernels and autograd of these ops are
# registered by their OpFamily (ceag/ops/masked_linear.py) when dispatch first routes to
# "triton", so this module imports nothing from the layer above.
opaque_under_interpreter(masked_linear_triton, masked_linear_grad_input_triton, masked_linear_grad_weight_triton)
