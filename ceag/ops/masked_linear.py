"""Fused masked-weight linear: ``y = x @ (weight * mask).T + bias`` without building W*M.

One API over every backend:

* ``"reference"``: :func:`ceag.ops.reference.masked_linear` (plain PyTorch, the spec);
* ``"cpp"`` / ``"cuda"``: ``torch.ops.ceag.masked_linear`` (C++ kernels, dispatched by device;
  csrc/cpu/masked_linear_cpu.cpp on CPU);
* ``"triton"``: ``torch.ops.ceag.masked_linear_triton`` and its two gradient ops, registered by
  ``ceag.kernels.masked_linear`` (imported lazily) with the same schemas as the C++ ops.

On CPU the C++ kernel is sparse-aware: given a :class:`MaskLayout` (the mask compressed by
output row, CSR, and by input column, CSC; int32) it runs the forward, grad_x and grad_W in
O(nnz * B). Above :data:`DENSE_THRESHOLD` density it falls back to ATen GEMMs on W*M.

Fake (meta) kernels and autograd are registered on each backend's ops through the family's
record, :data:`MASKED_LINEAR` (ceag/ops/_registry.py), so ``torch.compile(fullgraph=True)``
traces a model that uses the op without graph breaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ceag.ops import reference
from ceag.ops._checks import FLOAT_DTYPES, as_rows, check_bias, check_tensor
from ceag.ops._registry import OpFamily, dispatch, register_family

__all__ = [
    "DENSE_THRESHOLD",
    "MaskLayout",
    "cpu_layout",
    "masked_linear",
]

#: Mask density (kept fraction) at or above which the CPU kernel takes its dense path.
#: Measured forward + backward in fp32 on the 2-core AMD EPYC (Zen 5) dev machine, on a
#: lightly loaded run (ms, eager / sparse path / dense path):
#:   B=256 1024x1024 at 50% density:  8.5 / 9.2 / 11.7
#:   B=64 4096x4096 at 50% density:   144 / 84  / 176
#: The sparse path's cost grows linearly with density (~18.5 ms per unit density at B=256,
#: ~170 ms at B=64) while the dense path costs ~1.2-1.4x eager (it rebuilds W*M for grad_x),
#: so the crossover is near 0.63 density for the first case and near 1.0 for the second;
#: 0.6 keeps every measured case on its faster path. Re-measure with
#: bench/bench_masked_linear.py on a quiet machine before moving it.
DENSE_THRESHOLD: float = 0.6

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class MaskLayout:
    """The kept positions of a mask [N, K], compressed two ways (int32, on the mask's device).

    ``csr_ptr`` [N+1] / ``csr_idx`` [nnz]: kept columns of each output row, ascending (forward
    and grad_weight). ``csc_ptr`` [K+1] / ``csc_idx`` [nnz]: kept rows of each input column,
    ascending (grad_input).
    """

    csr_ptr: torch.Tensor
    csr_idx: torch.Tensor
    csc_ptr: torch.Tensor
    csc_idx: torch.Tensor
    shape: tuple[int, int]
    nnz: int
    density: float

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> MaskLayout:
        """Compress a bool mask [N, K] (vectorized torch ops, no Python loop)."""
        check_tensor("mask", mask, dim=2, dtypes=(torch.bool,))
        n, k = mask.shape
        if n * k > _INT32_MAX:
            raise ValueError(f"mask has {n * k} entries; int32 layouts hold at most {_INT32_MAX}")
        mask = mask.detach()
        flat = mask.reshape(-1).nonzero().squeeze(1)  # row-major: sorted by row, then column
        csr_idx = (flat % k).to(torch.int32) if k > 0 else flat.to(torch.int32)
        flat_t = mask.t().reshape(-1).nonzero().squeeze(1)  # sorted by column, then row
        csc_idx = (flat_t % n).to(torch.int32) if n > 0 else flat_t.to(torch.int32)
        zero = torch.zeros(1, dtype=torch.int32, device=mask.device)
        csr_ptr = torch.cat([zero, mask.sum(1, dtype=torch.int32).cumsum(0, dtype=torch.int32)])
        csc_ptr = torch.cat([zero, mask.sum(0, dtype=torch.int32).cumsum(0, dtype=torch.int32)])
        nnz = int(flat.numel())
        return cls(
            csr_ptr=csr_ptr,
            csr_idx=csr_idx.contiguous(),
            csc_ptr=csc_ptr,
            csc_idx=csc_idx.contiguous(),
            shape=(n, k),
            nnz=nnz,
            density=nnz / (n * k) if n * k > 0 else 1.0,
        )

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(csr_ptr, csr_idx, csc_ptr, csc_idx), the order the ops take them in."""
        return self.csr_ptr, self.csr_idx, self.csc_ptr, self.csc_idx

    @property
    def device(self) -> torch.device:
        return self.csr_ptr.device

    def to(self, device: torch.device | str) -> MaskLayout:
        moved = [t.to(device) for t in self.tensors()]
        return MaskLayout(*moved, shape=self.shape, nnz=self.nnz, density=self.density)


def _forward_fake(x, weight, mask, bias, csr_ptr, csr_idx, csc_ptr, csc_idx):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    torch._check(x.shape[1] == weight.shape[1], lambda: "x and weight disagree on K")
    return x.new_empty((x.shape[0], weight.shape[0]))


def _grad_input_fake(grad_y, weight, mask, csc_ptr, csc_idx):
    torch._check(grad_y.dim() == 2, lambda: f"grad_y must be 2-D, got {grad_y.dim()}-D")
    return grad_y.new_empty((grad_y.shape[0], weight.shape[1]))


def _grad_weight_fake(grad_y, x, mask, csr_ptr, csr_idx):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    return x.new_empty((mask.shape[0], mask.shape[1]))


def _register_autograd(forward_op, grad_input_op, grad_weight_op) -> None:
    """grad_x through ``grad_input_op``, grad_W through ``grad_weight_op``; never to the mask."""

    def setup_context(ctx, inputs, output):
        x, weight, mask, _bias, csr_ptr, csr_idx, csc_ptr, csc_idx = inputs
        ctx.save_for_backward(x, weight, mask, csr_ptr, csr_idx, csc_ptr, csc_idx)

    def backward(ctx, grad_y):
        x, weight, mask, csr_ptr, csr_idx, csc_ptr, csc_idx = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_input_op(grad_y, weight, mask, csc_ptr, csc_idx)
        if ctx.needs_input_grad[1]:
            grad_w = grad_weight_op(grad_y, x, mask, csr_ptr, csr_idx)
        if ctx.needs_input_grad[3]:
            grad_b = grad_y.sum(0)
        return grad_x, grad_w, None, grad_b, None, None, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


MASKED_LINEAR = register_family(
    OpFamily(
        name="masked_linear",
        compiled=("masked_linear", "masked_linear_grad_input", "masked_linear_grad_weight"),
        triton=("masked_linear_triton", "masked_linear_grad_input_triton", "masked_linear_grad_weight_triton"),
        triton_module="ceag.kernels.masked_linear",
        reference=reference.masked_linear,
        fake=(_forward_fake, _grad_input_fake, _grad_weight_fake),
        autograd=_register_autograd,
    )
)


def _check_inputs(x, weight, mask, bias, layout) -> None:
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension [..., K], got shape {tuple(x.shape)}")
    check_tensor("weight", weight, dim=2, dtypes=(x.dtype,), device=x.device, device_of="x")
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(
            f"x's last dimension ({x.shape[-1]}) must equal weight.shape[1] (K = {k}); "
            f"x has shape {tuple(x.shape)}, weight {tuple(weight.shape)}"
        )
    check_tensor("mask", mask, dtypes=(torch.bool,), device=x.device, device_of="x")
    if mask.shape != weight.shape:
        raise ValueError(f"mask must have weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
    check_bias(bias, n, x)
    if layout is not None:
        if not isinstance(layout, MaskLayout):
            raise TypeError(f"layout must be a MaskLayout, got {type(layout).__name__}")
        if layout.shape != (n, k):
            raise ValueError(f"layout is for a mask of shape {layout.shape}, weight has {(n, k)}")


def cpu_layout(mask: torch.Tensor) -> MaskLayout | None:
    """The layout the CPU kernel should get for ``mask``: None when the dense path is the faster
    one (density at or above :data:`DENSE_THRESHOLD`) or the mask is not on CPU."""
    if mask.device.type != "cpu" or mask.numel() == 0:
        return None
    if int(mask.count_nonzero()) >= DENSE_THRESHOLD * mask.numel():
        return None
    return MaskLayout.from_mask(mask)


_NO_LAYOUT = (None, None, None, None)


def _cpu_layout_args(mask: torch.Tensor, layout: MaskLayout | None):
    """The layout tensors the C++ op gets on CPU: a layout below the threshold, else Nones."""
    if layout is None:
        if torch.compiler.is_compiling():
            return _NO_LAYOUT
        # No cached layout: compress the mask on the fly when it is sparse enough. This costs a
        # few passes over the mask (less than the dense path's W*M) and serves the forward and
        # both gradients; layers should cache it instead (ceag.nn.MaskedLinear does).
        layout = cpu_layout(mask)
        if layout is None:
            return _NO_LAYOUT
    if layout.density >= DENSE_THRESHOLD:
        return _NO_LAYOUT
    if layout.device != mask.device:
        raise ValueError(f"layout is on {layout.device} but mask is on {mask.device}")
    return layout.tensors()


def masked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    layout: MaskLayout | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """``y = x @ (weight * mask).T + bias`` for x [..., K], weight [N, K], mask [N, K] bool.

    ``layout``: the mask's :class:`MaskLayout` (build it once per mask change; it must match the
    mask). ``backend``: "cpp", "triton", "cuda" or "reference"; default by device, or
    ``$CEAG_BACKEND``. Gradients flow to x, weight and bias; never to the mask.

    Edge cases (tests/reliability/test_bad_input.py): zero-size x, N or K are legal (K = 0
    gives the bias, or zeros); non-contiguous inputs give the contiguous result; pruned weights
    are absent, so a NaN/Inf weight where the mask is False reaches neither y nor grad_x. A
    NaN/Inf in x is not checked: it stays in its row of y, and reaches y[b, n] whenever a kept
    weight of row n reads it (whether it also leaks through a column the mask prunes entirely
    depends on the path: dense GEMMs compute NaN * 0).
    """
    _check_inputs(x, weight, mask, bias, layout)
    route = dispatch(MASKED_LINEAR, backend, x.device)
    if route.backend == "reference":
        return MASKED_LINEAR.reference(x, weight, mask, bias)
    forward_op = route.ops[0]
    n, k = weight.shape
    lead = x.shape[:-1]
    x2 = as_rows(x, k)  # K = 0: y is then the bias (or zeros) for every row
    weight = weight.contiguous()
    mask = mask.contiguous()
    if bias is not None:
        bias = bias.contiguous()  # the Triton kernel reads bias densely (a strided one gave wrong y)
    # Only the C++ CPU kernel reads a layout; the Triton kernels read the dense mask.
    layout_args = _cpu_layout_args(mask, layout) if route.backend == "cpp" else _NO_LAYOUT
    y = forward_op(x2, weight, mask, bias, *layout_args)
    return y.reshape(*lead, n)
