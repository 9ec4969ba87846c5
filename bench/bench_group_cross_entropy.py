"""group_cross_entropy on CPU: forward+backward against eager PyTorch and torch.compile.

Cases (``group``): ``gce_fwd_bwd-N{N}-C{C}-G{G}-{dtype}`` time one training step of the
per-group statistics: forward, then the backward of sum_g w_g * loss_sum[g]. Impls:

- ``eager``: F.cross_entropy(reduction='none') + argmax + scatter_add, autograd backward,
- ``compile``: torch.compile of the same function,
- ``ceag_cpp``: our op, backward through loss_sum (a second sweep from the saved lse),
- ``ceag_cpp_fused``: our op with group_weight: the gradient is written during the forward.

``gce_fwd-...`` times the forward alone and reports its effective bandwidth (GB/s over the
N*C logits bytes) beside ``copy`` (logits.clone(), the memory-bound limit).

    pytest bench/bench_group_cross_entropy.py --benchmark-json=/tmp/gce.json
    python bench/report.py /tmp/gce.json
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ceag.ops import group_cross_entropy

SHAPES = {"N65536-C100-G1000": (65536, 100, 1000), "N8192-C1000-G1000": (8192, 1000, 1000)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def eager_stats(logits, target, group, num_groups: int):
    """The plain-PyTorch per-group statistics (the baseline)."""
    loss = F.cross_entropy(logits, target, reduction="none").float()
    loss_sum = torch.zeros(num_groups, dtype=torch.float32).scatter_add(0, group, loss)
    hit = (logits.argmax(dim=1) == target).long()
    correct = torch.zeros(num_groups, dtype=torch.long).scatter_add(0, group, hit)
    count = torch.zeros(num_groups, dtype=torch.long).scatter_add(0, group, torch.ones_like(hit))
    return loss_sum, correct, count, hit.bool()


_compiled_stats = torch.compile(eager_stats, dynamic=False)


def _inputs(shape: str, dtype: str):
    n, c, g = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(n, c, generator=gen) * 2).to(DTYPES[dtype])
    target = torch.randint(0, c, (n,), generator=gen)
    group = torch.randint(0, g, (n,), generator=gen)
    weight = torch.rand(g, generator=gen) / n
    return logits, target, group, g, weight


def _step_fn(impl: str, logits, target, group, num_groups, weight):
    x = logits.clone().requires_grad_()

    if impl in ("eager", "compile"):
        stats = eager_stats if impl == "eager" else _compiled_stats

        def step():
            x.grad = None
            loss_sum, *_ = stats(x, target, group, num_groups)
            (loss_sum * weight).sum().backward()

    elif impl == "ceag_cpp":

        def step():
            x.grad = None
            out = group_cross_entropy(x, target, group, num_groups, backend="cpp")
            (out.loss_sum * weight).sum().backward()

    elif impl == "ceag_cpp_fused":

        def step():
            x.grad = None
            out = group_cross_entropy(x, target, group, num_groups, group_weight=weight, backend="cpp")
            out.weighted_loss.backward()

    else:  # pragma: no cover
        raise ValueError(impl)
    return step


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", ["eager", "compile", "ceag_cpp", "ceag_cpp_fused"])
def test_gce_fwd_bwd(benchmark, impl: str, shape: str, dtype: str):
    logits, target, group, num_groups, weight = _inputs(shape, dtype)
    step = _step_fn(impl, logits, target, group, num_groups, weight)
    benchmark.group = f"gce_fwd_bwd-{shape}-{dtype}"
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.pedantic(step, rounds=15, iterations=1, warmup_rounds=3)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", ["eager", "compile", "ceag_cpp", "copy"])
def test_gce_fwd(benchmark, impl: str, shape: str):
    logits, target, group, num_groups, _ = _inputs(shape, "fp32")
    if impl == "copy":
        fn = logits.clone
    elif impl == "ceag_cpp":
        fn = lambda: group_cross_entropy(logits, target, group, num_groups, backend="cpp")  # noqa: E731
    else:
        stats = eager_stats if impl == "eager" else _compiled_stats
        fn = lambda: stats(logits, target, group, num_groups)  # noqa: E731
    benchmark.group = f"gce_fwd-{shape}-fp32"
    with torch.no_grad():
        benchmark.pedantic(fn, rounds=20, iterations=1, warmup_rounds=3)
    nbytes = logits.numel() * logits.element_size()
    benchmark.extra_info.update(
        threads=torch.get_num_threads(),
        gbps=nbytes / benchmark.stats.stats.median / 1e9,
    )
