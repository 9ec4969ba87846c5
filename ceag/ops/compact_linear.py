"""Compact masked linear: a sparse layer that stores only its kept weights.

``values`` [nnz] holds the kept weights of W [N, K] in CSR order (row by row, columns
ascending); a :class:`CompactLayout` holds the structure (CSR for the forward and the values'
gradient, CSC plus the CSC → CSR permutation for grad_x; int32). On CPU the three C++ ops
(csrc/cpu/compact_linear_cpu.cpp) run in O(nnz · B) and never build a dense [N, K] tensor,
so the gradient and the optimizer state are nnz-sized too. On other devices (and with
``backend="reference"``) the op runs :func:`ceag.ops.reference.compact_linear` (gather and
index_add); fused GPU kernels are the GPU issue's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ceag.ops import reference
from ceag.ops._checks import FLOAT_DTYPES, as_rows, check_bias, check_tensor
from ceag.ops._registry import OpFamily, dispatch, register_family

__all__ = ["CompactLayout", "compact_linear"]

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class CompactLayout:
    """The kept positions of an [N, K] mask, in the order ``values`` stores them.

    ``row_ptr`` [N+1] / ``col_idx`` [nnz]: CSR (position p of values is (row of p, col_idx[p])).
    ``col_ptr`` [K+1] / ``row_idx`` [nnz]: CSC, and ``csc_to_csr`` [nnz]: the position in
    values of each CSC entry. All int32 on one device.
    """

    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    col_ptr: torch.Tensor
    row_idx: torch.Tensor
    csc_to_csr: torch.Tensor
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.col_idx.numel())

    @property
    def density(self) -> float:
        n, k = self.shape
        return self.nnz / (n * k) if n * k else 1.0

    @property
    def device(self) -> torch.device:
        return self.row_ptr.device

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> CompactLayout:
        """The layout of a bool mask [N, K]."""
        check_tensor("mask", mask, dim=2, dtypes=(torch.bool,))
        n, k = mask.shape
        if n * k > _INT32_MAX:
            raise ValueError(f"mask has {n * k} entries; int32 layouts hold at most {_INT32_MAX}")
        flat = mask.detach().reshape(-1).nonzero().squeeze(1)  # row-major: CSR order
        counts = mask.sum(1, dtype=torch.int32)
        return cls._from_positions(flat, counts, (n, k))

    @classmethod
    def from_csr(cls, row_ptr: torch.Tensor, col_idx: torch.Tensor, shape: tuple[int, int]) -> CompactLayout:
        """The layout of CSR arrays (as a state dict stores them); checks them."""
        n, k = (int(s) for s in shape)
        check_tensor("row_ptr", row_ptr, dim=1, dtypes=(torch.int32,))
        check_tensor("col_idx", col_idx, dim=1, dtypes=(torch.int32,), device=row_ptr.device, device_of="row_ptr")
        if row_ptr.numel() != n + 1:
            raise ValueError(f"row_ptr must have {n + 1} entries (out_features + 1), got {row_ptr.numel()}")
        counts = row_ptr[1:] - row_ptr[:-1]
        if int(row_ptr[0]) != 0 or int(row_ptr[-1]) != col_idx.numel() or bool((counts < 0).any()):
            raise ValueError("row_ptr must start at 0, never decrease and end at col_idx.numel()")
        if col_idx.numel() and (int(col_idx.min()) < 0 or int(col_idx.max()) >= k):
            raise ValueError(f"col_idx must lie in [0, {k}) (in_features)")
        rows = torch.repeat_interleave(torch.arange(n, device=row_ptr.device), counts.long())
        flat = rows * k + col_idx.long()
        if flat.numel() > 1 and not bool((flat[1:] > flat[:-1]).all()):
            raise ValueError("col_idx must be strictly ascending within each row (no duplicates)")
        return cls._from_positions(flat, counts, (n, k))

    @classmethod
    def _from_positions(cls, flat: torch.Tensor, row_counts: torch.Tensor, shape: tuple[int, int]) -> CompactLayout:
        """From the ascending row-major positions of the kept entries."""
        n, k = shape
        device = flat.device
        rows, cols = (flat // k, flat % k) if k else (flat, flat)
        # CSC order: by column, then row; the stable sort keeps rows ascending within a column.
        order = torch.sort(cols, stable=True).indices
        zero = torch.zeros(1, dtype=torch.int32, device=device)
        col_counts = torch.bincount(cols, minlength=k)[:k] if flat.numel() else torch.zeros(k, dtype=torch.long, device=device)
        return cls(
            row_ptr=torch.cat([zero, row_counts.to(torch.int32).cumsum(0, dtype=torch.int32)]),
            col_idx=cols.to(torch.int32).contiguous(),
            col_ptr=torch.cat([zero, col_counts.cumsum(0).to(torch.int32)]),
            row_idx=rows[order].to(torch.int32).contiguous(),
            csc_to_csr=order.to(torch.int32).contiguous(),
            shape=(n, k),
        )

    def positions(self) -> torch.Tensor:
        """The row-major flat index (row · K + col, int64) of each stored value."""
        n, k = self.shape
        counts = (self.row_ptr[1:] - self.row_ptr[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(n, device=self.device), counts)
        return rows * k + self.col_idx.long()

    def mask(self) -> torch.Tensor:
        """The bool mask [N, K] (a new dense tensor)."""
        out = torch.zeros(self.shape[0] * self.shape[1], dtype=torch.bool, device=self.device)
        out[self.positions()] = True
        return out.view(self.shape)

    def to_dense(self, values: torch.Tensor) -> torch.Tensor:
        """W [N, K]: ``values`` at the kept positions, zeros elsewhere (a new tensor)."""
        out = values.new_zeros(self.shape[0] * self.shape[1])
        out[self.positions()] = values
        return out.view(self.shape)

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """The values of a dense [N, K] tensor at the kept positions, in storage order."""
        if tuple(dense.shape) != self.shape:
            raise ValueError(f"expected a tensor of shape {self.shape}, got {tuple(dense.shape)}")
        return dense.reshape(-1)[self.positions().to(dense.device)]

    def to(self, device: torch.device | str) -> CompactLayout:
        t = [x.to(device) for x in (self.row_ptr, self.col_idx, self.col_ptr, self.row_idx, self.csc_to_csr)]
        return CompactLayout(*t, shape=self.shape)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """(row_ptr, col_idx, col_ptr, row_idx, csc_to_csr), the order the op takes them in."""
        return self.row_ptr, self.col_idx, self.col_ptr, self.row_idx, self.csc_to_csr


def _forward_fake(x, values, row_ptr, col_idx, col_ptr, row_idx, csc_to_csr, bias):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    return x.new_empty((x.shape[0], row_ptr.shape[0] - 1))


def _grad_input_fake(grad_y, values, col_ptr, row_idx, csc_to_csr):
    return grad_y.new_empty((grad_y.shape[0], col_ptr.shape[0] - 1))


def _grad_values_fake(grad_y, x, row_ptr, col_idx):
    return x.new_empty((col_idx.shape[0],))


def _register_autograd(forward_op, grad_input_op, grad_values_op) -> None:
    """grad_x and grad_values through the two backward ops (both O(nnz · B)); none to the layout."""

    def setup_context(ctx, inputs, output):
        x, values, row_ptr, col_idx, col_ptr, row_idx, csc_to_csr, _bias = inputs
        ctx.save_for_backward(x, values, row_ptr, col_idx, col_ptr, row_idx, csc_to_csr)

    def backward(ctx, grad_y):
        x, values, row_ptr, col_idx, col_ptr, row_idx, csc_to_csr = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        grad_x = grad_v = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_input_op(grad_y, values, col_ptr, row_idx, csc_to_csr)
        if ctx.needs_input_grad[1]:
            grad_v = grad_values_op(grad_y, x, row_ptr, col_idx)
        if ctx.needs_input_grad[7]:
            grad_b = grad_y.sum(0)
        return grad_x, grad_v, None, None, None, None, None, grad_b

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


COMPACT_LINEAR = register_family(
    OpFamily(
        name="compact_linear",
        compiled=("compact_linear", "compact_linear_grad_input", "compact_linear_grad_values"),
        triton=(),
        triton_module="",
        reference=reference.compact_linear,
        fake=(_forward_fake, _grad_input_fake, _grad_values_fake),
        autograd=_register_autograd,
        reference_on=("cuda", "triton"),  # GPU: the reference runs (the GPU issue brings fused kernels)
    )
)


def compact_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    layout: CompactLayout,
    bias: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``y = x @ W.T + bias`` for x [..., K], where W [N, K] is ``values`` [nnz] placed at
    ``layout``'s positions. Gradients flow to x, values and bias.

    ``backend``: "cpp" (CPU C++ kernels, the CPU default) or "reference"; on CUDA tensors
    "cuda" and "triton" run the reference (no fused GPU kernels yet).
    """
    if not isinstance(layout, CompactLayout):
        raise TypeError(f"layout must be a CompactLayout, got {type(layout).__name__}")
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension [..., K], got shape {tuple(x.shape)}")
    n, k = layout.shape
    check_tensor("values", values, dim=1, dtypes=(x.dtype,), device=x.device, device_of="x")
    if values.numel() != layout.nnz:
        raise ValueError(f"values must have layout.nnz = {layout.nnz} entries, got {values.numel()}")
    if x.shape[-1] != k:
        raise ValueError(f"x's last dimension ({x.shape[-1]}) must equal the layout's in_features K = {k}")
    if layout.device != x.device:
        raise ValueError(f"layout is on {layout.device} but x is on {x.device}")
    check_bias(bias, n, x)
    lead = x.shape[:-1]
    x2 = as_rows(x, k)
    route = dispatch(COMPACT_LINEAR, backend, x.device)
    if route.ops:
        y = route.ops[0](x2, values.contiguous(), *layout.tensors(), bias)
    else:
        y = COMPACT_LINEAR.reference(x2, values, layout.row_ptr, layout.col_idx, k, bias)
    return y.reshape(*lead, n)
