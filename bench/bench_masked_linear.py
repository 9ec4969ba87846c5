"""masked_linear forward + backward (grads of x, weight and bias) on CPU, fp32.

Cases: B=256 1024x1024 and B=64 4096x4096 at 50/90/95/99% sparsity (random masks).
Implementations, timed in the same run:

* ``eager``: ``F.linear(x, W * M, b)`` with autograd (the baseline of bench/report.py);
* ``torch_sparse``: an autograd.Function built from torch's own sparse ops, structures
  precomputed: CSR matmul forward, the transposed CSR for grad_x, ``torch.sparse.sampled_addmm``
  for grad_W (scattered back into a dense gradient);
* ``compile``: ``torch.compile`` of the eager code;
* ``ceag_cpp``: ``ceag.ops.masked_linear`` with the mask's cached ``MaskLayout`` (the dense
  path above ``DENSE_THRESHOLD`` density).

Targets (issue 2): ceag_cpp >= 4x eager at 95%, >= 10x at 99%, >= 0.95x at 50%, faster than
torch_sparse everywhere.

    pytest bench/bench_masked_linear.py --benchmark-json=/tmp/ml.json && python bench/report.py /tmp/ml.json
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ceag  # noqa: F401
from ceag.ops import MaskLayout, masked_linear

SHAPES = {"B256-1024x1024": (256, 1024, 1024), "B64-4096x4096": (64, 4096, 4096)}
SPARSITIES = ["50", "90", "95", "99"]
IMPLS = ["eager", "torch_sparse", "compile", "ceag_cpp"]


class _TorchSparseLinear(torch.autograd.Function):
    """y = x @ (W*M).T + b from torch.sparse ops; ``st`` holds the precomputed structures."""

    @staticmethod
    def forward(ctx, x, weight, bias, st):
        w_flat = weight.reshape(-1)
        a = torch.sparse_csr_tensor(st["crow"], st["col"], w_flat[st["csr_flat"]], st["shape"])
        y = torch.sparse.addmm(bias.unsqueeze(1).expand(st["shape"][0], x.shape[0]), a, x.t()).t()
        ctx.save_for_backward(x, weight)
        ctx.st = st
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        st = ctx.st
        n, k = st["shape"]
        at = torch.sparse_csr_tensor(st["crow_t"], st["col_t"], weight.reshape(-1)[st["csc_flat"]], (k, n))
        grad_x = (at @ gy.t()).t()
        sampled = torch.sparse.sampled_addmm(st["pattern"], gy.t().contiguous(), x, beta=0.0)
        grad_w = torch.zeros(n * k, dtype=x.dtype)
        grad_w[st["csr_flat"]] = sampled.values()
        return grad_x, grad_w.view(n, k), gy.sum(0), None


def _torch_sparse_structures(mask: torch.Tensor, dtype: torch.dtype) -> dict:
    n, k = mask.shape
    lay = MaskLayout.from_mask(mask)
    rows = torch.repeat_interleave(torch.arange(n), lay.csr_ptr.diff().long())
    cols_t = torch.repeat_interleave(torch.arange(k), lay.csc_ptr.diff().long())
    crow, col = lay.csr_ptr.long(), lay.csr_idx.long()
    return {
        "shape": (n, k),
        "crow": crow,
        "col": col,
        "csr_flat": rows * k + col,
        "crow_t": lay.csc_ptr.long(),
        "col_t": lay.csc_idx.long(),
        "csc_flat": lay.csc_idx.long() * k + cols_t,
        "pattern": torch.sparse_csr_tensor(crow, col, torch.zeros(lay.nnz, dtype=dtype), (n, k)),
    }


def _eager(x, w, m, b):
    return F.linear(x, w * m, b)


_compiled = torch.compile(_eager)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_masked_linear_fwd_bwd(benchmark, shape, sparsity, impl):
    B, N, K = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, K, generator=g, requires_grad=True)
    w = (torch.randn(N, K, generator=g) / K**0.5).requires_grad_()
    b = torch.randn(N, generator=g, requires_grad=True)
    mask = torch.rand(N, K, generator=g) >= int(sparsity) / 100
    gy = torch.randn(B, N, generator=g)
    inputs = (x, w, b)

    if impl == "eager":

        def fwd():
            return _eager(x, w, mask, b)
    elif impl == "compile":

        def fwd():
            return _compiled(x, w, mask, b)
    elif impl == "torch_sparse":
        st = _torch_sparse_structures(mask, x.dtype)

        def fwd():
            return _TorchSparseLinear.apply(x, w, b, st)
    elif impl == "ceag_cpp":
        layout = MaskLayout.from_mask(mask)

        def fwd():
            return masked_linear(x, w, mask, b, layout=layout, backend="cpp")
    else:  # pragma: no cover
        raise ValueError(impl)

    def step():
        return torch.autograd.grad(fwd(), inputs, gy)

    # every implementation computes the same gradients
    ref = torch.autograd.grad(_eager(x, w, mask, b), inputs, gy)
    for got, want in zip(step(), ref):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)

    benchmark.group = f"masked_linear fwd+bwd {shape} sparsity={sparsity}%"
    benchmark.extra_info.update(density=float(mask.float().mean()), device="cpu")
    big = N * K >= 4096 * 4096
    benchmark.pedantic(step, rounds=8 if big else 30, iterations=1, warmup_rounds=2 if big else 5)
