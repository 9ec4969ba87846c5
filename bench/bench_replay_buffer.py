"""replay_buffer_update on CPU at G=1000, k=40, N=256 (one training batch of correctness bits).

Impls: ``eager`` is the per-group Python loop over deques (what the paper's released code
does, and the baseline); ``ceag_cpp`` is our op (one O(N) pass in C++).

    pytest bench/bench_replay_buffer.py --benchmark-json=/tmp/rb.json
    python bench/report.py /tmp/rb.json
"""

from __future__ import annotations

from collections import deque

import pytest
import torch

from ceag.ops import replay_buffer_update

G, K, N = 1000, 40, 256


@pytest.mark.parametrize("impl", ["eager", "ceag_cpp"])
def test_replay_buffer_update(benchmark, impl: str):
    gen = torch.Generator().manual_seed(0)
    group = torch.randint(0, G, (N,), generator=gen)
    values = torch.rand(N, generator=gen) < 0.7
    if impl == "eager":
        queues = [deque(maxlen=K) for _ in range(G)]

        def step():
            # Per group: select its samples of the batch and push them (a loop over G).
            for g in range(G):
                sel = values[group == g]
                if sel.numel():
                    queues[g].extend(sel.tolist())
            return [len(q) == K for q in queues]

    else:
        buffer = torch.zeros(G, K, dtype=torch.bool)
        head = torch.zeros(G, dtype=torch.long)
        fill = torch.zeros(G, dtype=torch.long)

        def step():
            return replay_buffer_update(buffer, head, fill, group, values, backend="cpp") == K

    benchmark.group = f"replay_buffer-G{G}-k{K}-N{N}"
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.pedantic(step, rounds=30 if impl == "eager" else 200, iterations=1, warmup_rounds=3)
