"""Would compact storage pay for a conv layer? im2col (``F.unfold``) + the compact matmul at 99%
sparsity against the dense conv, forward + backward, fp32, CPU.

Cases: ResNet-shaped 3x3 layers (padding 1): B=128 64->64 at 32x32, B=64 128->128 at 16x16,
B=128 256->256 at 8x8. Implementations:

* ``eager``: ``F.conv2d`` (oneDNN) on the dense weight (the baseline);
* ``unfold_only``: just the im2col buffer the compact path needs (its floor);
* ``unfold_compact``: ``F.unfold`` then ``ceag.ops.compact_linear`` over the kept 1% of
  [out, in*3*3], with autograd.

The result decides issue 15's conv question: MaskedConv2d keeps dense storage while
``unfold_only`` alone costs a large share of the dense conv.

    python bench/run.py compact_conv
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ceag  # noqa: F401
from ceag.ops import CompactLayout, compact_linear

SHAPES = {"B128-64x32x32": (128, 64, 32), "B64-128x16x16": (64, 128, 16), "B128-256x8x8": (128, 256, 8)}
IMPLS = ["eager", "unfold_only", "unfold_compact"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_conv_fwd_bwd(benchmark, shape, impl):
    B, C, H = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, H, generator=g, requires_grad=True)
    w = torch.randn(C, C, 3, 3, generator=g, requires_grad=True)
    mask = torch.rand(C, C * 9, generator=g) < 0.01
    layout = CompactLayout.from_mask(mask)
    values = torch.randn(layout.nnz, generator=g, requires_grad=True)

    if impl == "eager":

        def step():
            F.conv2d(x, w, padding=1).sum().backward()
    elif impl == "unfold_only":

        def step():
            return F.unfold(x.detach(), 3, padding=1)
    else:

        def step():
            cols = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, C * 9)
            compact_linear(cols, values, layout).sum().backward()

    benchmark.group = f"conv3x3 fwd+bwd {shape} sparsity=99%"
    benchmark.extra_info.update(device="cpu", im2col_MiB=B * H * H * C * 9 * 4 / 2**20)
    benchmark.pedantic(step, rounds=4, iterations=1, warmup_rounds=1)
