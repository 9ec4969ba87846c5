"""Triton replay-buffer update: the O(N^2) kernel path and the sort path against the
reference (deques of the newest k per group), and torch.compile over the triton_op."""

from __future__ import annotations

import os
from collections import deque

import pytest
import torch

pytest.importorskip("triton")

from ceag.ops import reference, replay_buffer_update  # noqa: E402

R = pytest.importorskip("ceag.kernels.replay_buffer")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1", allow_module_level=True)

# (G, k, N): groups overflowing their ring within one batch (n_g > k), k = 1, a single group,
# N = 0, N spanning several kernel tiles (BLOCK_I = 64, BLOCK_J = 128).
CASES = [(5, 3, 40), (7, 4, 0), (3, 1, 17), (1, 5, 33), (40, 2, 200), (6, 40, 150)]


def _state(g, k, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    buf = torch.rand(g, k, generator=gen) < 0.5
    buf = buf.to(dtype) if dtype != torch.float32 else torch.randn(g, k, generator=gen)
    head = torch.randint(0, k, (g,), generator=gen)
    fill = torch.randint(0, k + 1, (g,), generator=gen)
    return buf.to(DEVICE), head.to(DEVICE), fill.to(DEVICE)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.bool, torch.float32], ids=str)
@pytest.mark.parametrize("use_kernel", [True, False], ids=["kernel", "sort"])
def test_matches_reference(case, dtype, use_kernel):
    g, k, n = case
    gen = torch.Generator().manual_seed(n)
    group = torch.randint(0, g, (n,), generator=gen).to(DEVICE, torch.int32 if n % 2 else torch.int64)
    values = torch.rand(n, generator=gen) < 0.5
    values = (values if dtype == torch.bool else torch.randn(n, generator=gen)).to(DEVICE)
    buf, head, fill = _state(g, k, dtype, seed=k)
    want = [t.clone().cpu() for t in (buf, head, fill)]
    reference.replay_buffer_update_(*want, group.cpu(), values.cpu())
    R.update(buf, head, fill, group, values, use_kernel=use_kernel)
    for got, exp in zip((buf, head, fill), want):
        assert torch.equal(got.cpu(), exp)


def test_newest_k_survive_over_several_batches():
    """Several batches against deques of maxlen k; every group overflows at least once."""
    g, k = 4, 3
    buf = torch.zeros(g, k, dtype=torch.float32, device=DEVICE)
    head = torch.zeros(g, dtype=torch.long, device=DEVICE)
    fill = torch.zeros(g, dtype=torch.long, device=DEVICE)
    rings = [deque(maxlen=k) for _ in range(g)]
    counter = 0
    for step, n in enumerate((10, 1, 7, 0, 13)):
        group = torch.randint(0, g, (n,), generator=torch.Generator().manual_seed(step))
        values = torch.arange(counter, counter + n, dtype=torch.float32)
        counter += n
        for gi, v in zip(group.tolist(), values.tolist()):
            rings[gi].append(v)
        torch.ops.ceag.replay_buffer_update_triton_(buf, head, fill, group.to(DEVICE), values.to(DEVICE))
    for gi in range(g):
        assert int(fill[gi]) == len(rings[gi])
        held = sorted(buf[gi, : len(rings[gi])].tolist()) if int(fill[gi]) < k else sorted(buf[gi].tolist())
        assert held == sorted(rings[gi])
        if rings[gi]:  # the newest value sits just before head
            assert buf[gi, (int(head[gi]) - 1) % k].item() == rings[gi][-1]


def test_torch_compile_fullgraph():
    g, k = 6, 4
    buf1, head1, fill1 = _state(g, k, torch.bool, seed=1)
    buf2, head2, fill2 = buf1.clone(), head1.clone(), fill1.clone()
    group = torch.randint(0, g, (25,), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    values = (torch.rand(25, generator=torch.Generator().manual_seed(3)) < 0.5).to(DEVICE)

    def step(buf, head, fill):
        return replay_buffer_update(buf, head, fill, group, values, backend="triton")

    compiled = torch.compile(step, fullgraph=True, backend="inductor" if DEVICE == "cuda" else "aot_eager")
    compiled(buf1, head1, fill1)
    step(buf2, head2, fill2)
    assert torch.equal(buf1, buf2) and torch.equal(head1, head2) and torch.equal(fill1, fill2)
