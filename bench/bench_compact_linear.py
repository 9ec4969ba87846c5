"""One training step of a masked linear layer on CPU, fp32: forward, backward (grads of x, the
weights and the bias) and an SGD step with momentum 0.9 and weight decay 1e-4.

Cases: B = 64 and 256, 1024x1024 and 4096x4096, at 50/90/95/99% sparsity (random masks).
Implementations, timed in the same run:

* ``eager``: ``F.linear(x, W * M, b)`` with autograd and a dense SGD step over W (the baseline);
* ``torch_sparse``: torch's own sparse ops (bench_masked_linear.py's autograd.Function: CSR
  matmul, transposed CSR, ``sampled_addmm``) with a dense SGD step;
* ``ceag_masked``: ``ceag.nn.MaskedLinear`` (dense weight Parameter, mask applied by the kernel,
  its cached layout) and a dense SGD step, then ``apply_masks_``, as the trainer does;
* ``ceag_compact``: ``ceag.nn.CompactLinear`` (only the kept weights; gradient and momentum
  nnz-sized).

Targets (issue 15): compact >= 20x eager at 99%, >= 8x at 95%; the dense-parameter path kept
where compact loses (>= 0.95x eager at 50% overall). ``extra_info`` records each layer's
parameter + gradient + optimizer-state bytes (``state_MB``).

    python bench/run.py compact_linear
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bench_masked_linear import _torch_sparse_structures, _TorchSparseLinear

import ceag  # noqa: F401
from ceag.nn import CompactLinear, MaskedLinear
from ceag.prune import apply_masks_

SHAPES = {
    "B64-1024x1024": (64, 1024, 1024),
    "B256-1024x1024": (256, 1024, 1024),
    "B64-4096x4096": (64, 4096, 4096),
    "B256-4096x4096": (256, 4096, 4096),
}
SPARSITIES = ["50", "90", "95", "99"]
IMPLS = ["eager", "torch_sparse", "ceag_masked", "ceag_compact"]


def _state_bytes(params, opt) -> int:
    """Parameters + gradients + optimizer state, in bytes."""
    total = 0
    for p in params:
        total += p.numel() * p.element_size() * (2 if p.grad is not None else 1)
        for v in opt.state.get(p, {}).values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
    return total


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_training_step(benchmark, shape, sparsity, impl):
    B, N, K = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, K, generator=g)
    mask = torch.rand(N, K, generator=g) >= int(sparsity) / 100
    w0 = torch.randn(N, K, generator=g) / K**0.5 * mask
    b0 = torch.randn(N, generator=g)
    gy = torch.randn(B, N, generator=g)
    masked = MaskedLinear(K, N, mask=mask)
    with torch.no_grad():
        masked.weight.copy_(w0)
        masked.bias.copy_(b0)

    if impl == "ceag_compact":
        layer = CompactLinear.from_dense(masked, mask)
        params = [layer.values, layer.bias]

        def fwd():
            return layer(x)
    elif impl == "ceag_masked":
        layer = masked
        params = [layer.weight, layer.bias]

        def fwd():
            return layer(x)
    else:
        w, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
        params = [w, b]
        if impl == "eager":

            def fwd():
                return F.linear(x, w * mask, b)
        else:
            st = _torch_sparse_structures(mask, x.dtype)

            def fwd():
                return _TorchSparseLinear.apply(x, w, b, st)

    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        fwd().backward(gy)
        opt.step()
        if impl == "ceag_masked":
            apply_masks_(layer)

    step()  # momentum state exists from here on, as in training
    benchmark.group = f"train step {shape} sparsity={sparsity}%"
    benchmark.extra_info.update(density=float(mask.float().mean()), device="cpu", state_MB=_state_bytes(params, opt) / 2**20)
    big = N * K >= 4096 * 4096
    benchmark.pedantic(step, rounds=6 if big else 20, iterations=1, warmup_rounds=1 if big else 3)


def test_compact_step_matches_eager():
    """The compact step takes the eager step's update (the timings compare equal work)."""
    B, N, K = 32, 96, 80
    g = torch.Generator().manual_seed(1)
    x, gy = torch.randn(B, K, generator=g), torch.randn(B, N, generator=g)
    mask = torch.rand(N, K, generator=g) >= 0.9
    w0 = torch.randn(N, K, generator=g) * mask
    w = torch.nn.Parameter(w0.clone())
    b = torch.nn.Parameter(torch.zeros(N))
    layer = CompactLinear.from_dense(torch.nn.Linear(K, N), mask)
    with torch.no_grad():
        layer.values.copy_(layer.layout.gather(w0))
        layer.bias.zero_()
    opts = [torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4) for p in ([w, b], [layer.values, layer.bias])]
    for _ in range(3):
        for opt, out in ((opts[0], lambda: F.linear(x, w * mask, b)), (opts[1], lambda: layer(x))):
            opt.zero_grad()
            out().backward(gy)
            opt.step()
    torch.testing.assert_close(layer.weight, (w * mask).detach(), rtol=1e-5, atol=1e-6)
