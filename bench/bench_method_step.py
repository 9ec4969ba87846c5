"""The method's own work per step, no model: what CEAG adds to a training step as G grows.

One round: ``method.step(logits, target, group)`` on a fixed batch (N = 256 samples, C = 10
classes, groups uniform over G), then ``loss.backward()`` into the logits. Impls:

- ``nft``: :class:`ceag.methods.NFT` (one fused group cross-entropy, the mean loss).
- ``ceag``: :class:`ceag.methods.CEAG`, k = 40, buffers full, constraints active; replay-buffer
  sums updated for the groups a step touches when G > 12 N (``_INCREMENTAL_SUMS_RATIO``).
- ``ceag-recount``: the same, with the buffer sums recounted over all G × k every step (the
  behaviour before the incremental sums), measured in the same run.

``ceag*`` rows carry ``over_nft``, the median ratio to the ``nft`` row of the same G.

    pytest bench/bench_method_step.py --benchmark-only --benchmark-json=/tmp/ms.json
    python bench/report.py /tmp/ms.json
"""

from __future__ import annotations

import pytest
import torch

import ceag.methods.buffers
from ceag.methods import build_method
from ceag.metrics import GroupStats

GS = [1000, 10000, 100000]
IMPLS = ["nft", "ceag", "ceag-recount"]  # nft first: the ratios compare with it
N, C, K = 256, 10, 40
ROUNDS, WARMUP = 300, 30

_medians: dict[tuple[int, str], float] = {}


def _case(impl: str, G: int):
    gen = torch.Generator().manual_seed(G)
    logits = torch.randn(N, C, generator=gen).requires_grad_()
    target = torch.randint(0, C, (N,), generator=gen)
    group = torch.randint(0, G, (N,), generator=gen)
    if impl == "nft":
        return build_method("nft", G), logits, target, group
    count = torch.randint(50, 150, (G,), generator=gen)
    dense = GroupStats(count, (count * 0.5).long(), count * 2.3)
    method = build_method("ceag", G, dense=dense, tolerance=0.01, buffer_size=K, dual_lr=1e-6, multiplier_sum_warning=None)
    method.buffer.copy_(torch.rand(G, K, generator=gen) < 0.5)
    method.fill.fill_(K)
    return method, logits, target, group


@pytest.mark.parametrize("G,impl", [(str(G), impl) for G in GS for impl in IMPLS])
def test_method_step(benchmark, monkeypatch, G: str, impl: str):
    num_groups = int(G)
    if impl == "ceag-recount":
        monkeypatch.setattr(ceag.methods.buffers, "_INCREMENTAL_SUMS_RATIO", 10**12)
    method, logits, target, group = _case(impl, num_groups)

    def step():
        logits.grad = None
        method.step(logits, target, group).loss.backward()

    benchmark.group = f"method_step-G{G}"
    benchmark.extra_info.update(G=num_groups, threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    _medians[(num_groups, impl)] = benchmark.stats.stats.median
    if impl != "nft" and (num_groups, "nft") in _medians:
        benchmark.extra_info["over_nft"] = round(_medians[(num_groups, impl)] / _medians[(num_groups, "nft")], 2)
