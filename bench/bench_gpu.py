"""GPU benchmarks (skipped without CUDA): Triton and CUDA kernels against eager and compile.

Cases (``group``), each a full training step (forward + backward) unless noted:

- ``gpu_gce-N65536-C1000-G1000-{bf16,fp32}``: per-group cross-entropy statistics and the
  backward of sum_g w_g loss_sum[g]. Impls: ``eager`` (cross_entropy(reduction='none') +
  argmax + scatter_add, autograd), ``compile`` (torch.compile of it), ``triton`` (backward
  from the saved lse), ``triton_fused`` (gradient written in the forward), ``cuda``.
- ``gpu_ml-B4096-4096x4096-bf16-{random,block128}-s{50,90,99}``: masked linear. Impls:
  ``eager`` (F.linear(x, W*M), autograd), ``compile``, ``triton``, ``cuda``. ``block128``
  masks prune whole 128x128 blocks (ceag.prune.block_magnitude_mask), aligned with the
  Triton tiles, whose empty tiles the kernels skip; ``tile_skip`` is the skipped fraction of
  forward tiles; ``TFLOPS`` counts the dense work (3 GEMMs) per second.
- ``gpu_replay-G1000-k40-N256``: one buffer update (no backward). ``eager``: the reference's
  Python loop over samples; ``torch_sort``: vectorized torch ops; ``triton``; ``cuda``.

Every timed call ends with torch.cuda.synchronize().

    pytest bench/bench_gpu.py --benchmark-only --benchmark-json=bench/results/gpu-gpu.json
    python bench/report.py bench/results/gpu-gpu.json
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

if torch.cuda.is_available():
    import ceag.kernels.masked_linear as triton_ml
    import ceag.kernels.replay_buffer as triton_rb
    from ceag._extension import has_cuda_kernels
    from ceag.ops import group_cross_entropy, masked_linear, reference, replay_buffer_update
    from ceag.prune import block_magnitude_mask

DEV = "cuda"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _device_info(benchmark, **extra):
    benchmark.extra_info["device"] = torch.cuda.get_device_name()
    benchmark.extra_info.update(extra)


def _run(benchmark, step, rounds=20, warmup=5):
    def timed():
        step()
        torch.cuda.synchronize()

    return benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)


def _need_cuda_kernels(impl):
    if impl == "cuda" and not has_cuda_kernels():
        pytest.skip("ceag was built without CUDA kernels")


# ------------------------------------------------------------------------------------------
# group cross-entropy


def eager_stats(logits, target, group, num_groups: int):
    loss = F.cross_entropy(logits, target, reduction="none").float()
    zeros_f = torch.zeros(num_groups, dtype=torch.float32, device=logits.device)
    zeros_i = torch.zeros(num_groups, dtype=torch.long, device=logits.device)
    loss_sum = zeros_f.scatter_add(0, group, loss)
    hit = (logits.argmax(dim=1) == target).long()
    correct = zeros_i.scatter_add(0, group, hit)
    count = zeros_i.scatter_add(0, group, torch.ones_like(hit))
    return loss_sum, correct, count, hit.bool()


_compiled_stats = torch.compile(eager_stats, dynamic=False)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("impl", ["eager", "compile", "triton", "triton_fused", "cuda"])
def test_group_cross_entropy(benchmark, impl, dtype):
    _need_cuda_kernels(impl)
    n, c, g = 65536, 1000, 1000
    gen = torch.Generator(device=DEV).manual_seed(0)
    logits = (2 * torch.randn(n, c, device=DEV, generator=gen)).to(DTYPES[dtype])
    target = torch.randint(0, c, (n,), device=DEV, generator=gen)
    group = torch.randint(0, g, (n,), device=DEV, generator=gen)
    weight = torch.rand(g, device=DEV, generator=gen) / n
    x = logits.clone().requires_grad_()

    def step():
        x.grad = None
        if impl in ("eager", "compile"):
            stats = eager_stats if impl == "eager" else _compiled_stats
            loss_sum = stats(x, target, group, g)[0]
            (loss_sum * weight).sum().backward()
        elif impl == "triton_fused":
            out = group_cross_entropy(x, target, group, g, group_weight=weight, backend="triton")
            out.weighted_loss.backward()
        else:
            out = group_cross_entropy(x, target, group, g, backend=impl)
            (out.loss_sum * weight).sum().backward()

    benchmark.group = f"gpu_gce-N{n}-C{c}-G{g}-{dtype}"
    _device_info(benchmark)
    _run(benchmark, step)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["logits_GB/s"] = round(logits.numel() * logits.element_size() / seconds / 1e9, 1)


# ------------------------------------------------------------------------------------------
# masked linear


def eager_masked_linear(x, w, mask):
    return F.linear(x, w * mask)


_compiled_ml = torch.compile(eager_masked_linear, dynamic=False)


@pytest.mark.parametrize("sparsity", [50, 90, 99])
@pytest.mark.parametrize("kind", ["random", "block128"])
@pytest.mark.parametrize("impl", ["eager", "compile", "triton", "cuda"])
def test_masked_linear(benchmark, impl, kind, sparsity):
    _need_cuda_kernels(impl)
    b, n, k = 4096, 4096, 4096
    gen = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(b, k, device=DEV, generator=gen, dtype=torch.bfloat16)
    w = (torch.randn(n, k, device=DEV, generator=gen) / k**0.5).to(torch.bfloat16)
    if kind == "random":
        mask = torch.rand(n, k, device=DEV, generator=gen) >= sparsity / 100
    else:
        mask = block_magnitude_mask(w, sparsity / 100, block=(128, 128))
    gy = torch.randn(b, n, device=DEV, generator=gen, dtype=torch.bfloat16)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()

    def step():
        xg.grad = wg.grad = None
        if impl in ("eager", "compile"):
            y = (eager_masked_linear if impl == "eager" else _compiled_ml)(xg, wg, mask)
        else:
            y = masked_linear(xg, wg, mask, backend=impl)
        y.backward(gy)

    benchmark.group = f"gpu_ml-B{b}-{n}x{k}-bf16-{kind}-s{sparsity}"
    occ = triton_ml.occupancy(mask, *triton_ml.TILES["fwd"])
    _device_info(benchmark, tile_skip=round(1 - occ.float().mean().item(), 3))
    _run(benchmark, step, rounds=20, warmup=5)
    benchmark.extra_info["TFLOPS"] = round(3 * 2 * b * n * k / benchmark.stats.stats.median / 1e12, 1)


# ------------------------------------------------------------------------------------------
# replay buffer


@pytest.mark.parametrize("impl", ["eager", "torch_sort", "triton", "cuda"])
def test_replay_buffer(benchmark, impl):
    _need_cuda_kernels(impl)
    g, k, n = 1000, 40, 256
    gen = torch.Generator(device=DEV).manual_seed(0)
    buffer = torch.zeros(g, k, dtype=torch.bool, device=DEV)
    head = torch.zeros(g, dtype=torch.long, device=DEV)
    fill = torch.zeros(g, dtype=torch.long, device=DEV)
    group = torch.randint(0, g, (n,), device=DEV, generator=gen)
    values = torch.rand(n, device=DEV, generator=gen) < 0.5

    def step():
        if impl == "eager":
            reference.replay_buffer_update_(buffer, head, fill, group, values)
        elif impl == "torch_sort":
            triton_rb.update(buffer, head, fill, group, values, use_kernel=False)
        else:
            replay_buffer_update(buffer, head, fill, group, values, backend=impl)

    benchmark.group = f"gpu_replay-G{g}-k{k}-N{n}"
    _device_info(benchmark)
    _run(benchmark, step, rounds=5 if impl == "eager" else 100, warmup=1 if impl == "eager" else 10)
