"""ceag.ops.group_cross_entropy: every backend against an fp64 ground truth and the reference.

Tolerances: float32/float64 results within 1e-5 relative of the fp64 truth; bf16/fp16 by the
flash-attention rule: the error against the fp64 truth (of the same low-precision inputs) is
at most 2x the error of eager PyTorch run in that dtype, plus a small floor.
Counts, correctness bits and argmax ties are exact on every backend.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ceag.ops import group_cross_entropy, reference

LOW_PRECISION = (torch.bfloat16, torch.float16)


def _make(n, c, g, dtype=torch.float32, *, ignore_frac=0.0, ignore_index=-100, seed=0, scale=3.0, ties=False):
    gen = torch.Generator().manual_seed(seed)
    if ties:  # small integers: many tied maxima per row
        logits = torch.randint(-2, 3, (n, c), generator=gen).to(dtype)
    else:
        logits = (torch.randn(n, c, generator=gen, dtype=torch.float64) * scale).to(dtype)
    target = torch.randint(0, c, (n,), generator=gen)
    if n and ties:  # half the rows target their first maximum, some a later tied one
        first = logits.float().argmax(dim=1)
        last = c - 1 - logits.float().flip(1).argmax(dim=1)
        target[: n // 2] = first[: n // 2]
        target[n // 2 :: 2] = last[n // 2 :: 2]
    if ignore_frac:
        drop = torch.rand(n, generator=gen) < ignore_frac
        target[drop] = ignore_index
    group = torch.randint(0, g, (n,), generator=gen)
    return logits, target, group


def _truth(logits, target, group, num_groups, *, label_smoothing=0.0, ignore_index=-100):
    """fp64 per-group loss sums of the given (possibly low-precision) logits, and their grad."""
    x = logits.detach().double().requires_grad_()
    keep = target != ignore_index
    safe = torch.where(keep, target, torch.zeros_like(target))
    if x.shape[0]:
        loss = F.cross_entropy(x, safe, reduction="none", label_smoothing=label_smoothing)
    else:
        loss = x.sum(dim=1)
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    loss_sum = torch.zeros(num_groups, dtype=torch.float64).index_add(0, group.long(), loss)
    return loss_sum, x


def _eager_low_precision(logits, target, group, num_groups, *, label_smoothing=0.0, ignore_index=-100):
    """Plain PyTorch in the logits' own dtype: the error baseline for bf16/fp16."""
    x = logits.detach().clone().requires_grad_()
    loss = F.cross_entropy(x, target, reduction="none", label_smoothing=label_smoothing, ignore_index=ignore_index)
    loss_sum = torch.zeros(num_groups, dtype=logits.dtype).index_add(0, group.long(), loss)
    return loss_sum, x


def _run(backend, device, logits, target, group, num_groups, **kw):
    out = group_cross_entropy(logits.to(device), target.to(device), group.to(device), num_groups, backend=backend, **kw)
    return out


def _check_stats(out, logits, target, group, num_groups, label_smoothing=0.0, ignore_index=-100):
    ref = reference.group_cross_entropy(
        logits, target, group, num_groups, label_smoothing=label_smoothing, ignore_index=ignore_index
    )
    assert out.loss_sum.shape == (num_groups,)
    assert out.loss_sum.dtype == (torch.float64 if logits.dtype == torch.float64 else torch.float32)
    assert out.correct.dtype == out.count.dtype == torch.int64
    assert out.sample_correct.dtype == torch.bool and out.sample_correct.shape == (logits.shape[0],)
    assert torch.equal(out.count.cpu(), ref[2]), "count"
    assert torch.equal(out.sample_correct.cpu(), ref[3]), "sample_correct (argmax with first-max ties)"
    assert torch.equal(out.correct.cpu(), ref[1]), "correct"
    truth, _ = _truth(logits, target, group, num_groups, label_smoothing=label_smoothing, ignore_index=ignore_index)
    got = out.loss_sum.detach().cpu().double()
    truth = truth.detach()
    if logits.dtype in LOW_PRECISION:
        eager, _ = _eager_low_precision(
            logits, target, group, num_groups, label_smoothing=label_smoothing, ignore_index=ignore_index
        )
        err, err_eager = (got - truth).abs().max(), (eager.double() - truth).abs().max()
        assert err <= 2 * err_eager + 1e-3 * (1 + truth.abs().max()), (float(err), float(err_eager))
    else:
        atol = 1e-5 * (1 + float(ref[2].max())) if num_groups else 1e-5
        torch.testing.assert_close(got, truth.detach(), rtol=1e-5, atol=atol)


# (id, N, C, G, label_smoothing, ignore_frac); "small" cases run on every backend, the rest
# only where a case costs nothing (not through the Triton interpreter).
CASES = [
    ("N0", 0, 5, 3, 0.0, 0.0, "small"),
    ("N1", 1, 7, 4, 0.0, 0.0, "small"),
    ("G1", 33, 10, 1, 0.0, 0.0, "small"),
    ("C2", 40, 2, 5, 0.0, 0.0, "small"),
    ("absent-groups", 20, 9, 50, 0.0, 0.0, "small"),
    ("odd-sizes", 61, 37, 6, 0.1, 0.2, "small"),
    ("smoothing-1", 17, 13, 3, 1.0, 0.0, "small"),
    ("all-ignored", 12, 6, 3, 0.0, 1.0, "small"),
    ("G100000-small-N", 50, 11, 100_000, 0.0, 0.1, "small"),
    ("many-rows", 3001, 45, 17, 0.05, 0.1, "big"),
    ("C1000", 257, 1000, 31, 0.1, 0.0, "big"),
    ("multi-block-C", 9, 9000, 4, 0.2, 0.1, "big"),
    ("C100000-small-N", 3, 100_000, 2, 0.1, 0.0, "big"),
    ("G100000-many-rows", 5000, 8, 100_000, 0.0, 0.0, "big"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_matches_reference(backend_device, case, dtype):
    backend, device = backend_device
    _, n, c, g, ls, ignore_frac, size = case
    if backend == "triton" and device == "cpu" and (size == "big" or dtype == torch.float64):
        pytest.skip("the Triton interpreter runs the small cases (and no float64)")
    logits, target, group = _make(n, c, g, dtype, ignore_frac=ignore_frac, seed=n + c)
    out = _run(backend, device, logits, target, group, g, label_smoothing=ls)
    _check_stats(out, logits, target, group, g, label_smoothing=ls)
    assert out.weighted_loss is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_argmax_ties_take_the_first_maximum(backend_device, dtype):
    backend, device = backend_device
    logits, target, group = _make(48, 21, 5, dtype, ties=True, seed=3)
    out = _run(backend, device, logits, target, group, 5)
    _check_stats(out, logits, target, group, 5)
    assert out.sample_correct.any() and not out.sample_correct.all()


def test_argmax_ties_across_blocks_cpp():
    # The C++ kernel walks long rows in blocks of 4096 classes: the first block's max wins.
    c = 3 * 4096 + 5
    logits = torch.zeros(4, c)
    for row, cols in enumerate([(5, 9000), (4096, 8192), (c - 1,), (8191, 8192, 12000)]):
        logits[row, list(cols)] = 7.0
    target = torch.tensor([5, 4096, c - 1, 8192])
    out = group_cross_entropy(logits, target, torch.zeros(4, dtype=torch.long), 1, backend="cpp")
    assert out.sample_correct.tolist() == [True, True, True, False]
    _check_stats(out, logits, target, torch.zeros(4, dtype=torch.long), 1)


@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_ignore_index(backend_device, ignore_index):
    backend, device = backend_device
    logits, target, group = _make(40, 8, 4, ignore_frac=0.3, ignore_index=ignore_index, seed=11)
    out = _run(backend, device, logits, target, group, 4, ignore_index=ignore_index, label_smoothing=0.1)
    _check_stats(out, logits, target, group, 4, label_smoothing=0.1, ignore_index=ignore_index)
    ignored = target == ignore_index
    assert not out.sample_correct.cpu()[ignored].any()


def test_int32_indices(backend_device):
    backend, device = backend_device
    logits, target, group = _make(30, 9, 4, seed=5)
    out = _run(backend, device, logits, target.int(), group.int(), 4)
    _check_stats(out, logits, target, group, 4)


def test_non_contiguous_logits(backend_device):
    backend, device = backend_device
    logits, target, group = _make(16, 20, 3, seed=6)
    wide = torch.randn(16, 40)
    wide[:, ::2] = logits
    out = _run(backend, device, wide[:, ::2], target, group, 3)
    _check_stats(out, logits, target, group, 3)


# ----------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------

GRAD_CASES = [
    ("small", 37, 11, 5, 0.0, 0.2, "small"),
    ("smooth", 25, 6, 3, 0.3, 0.0, "small"),
    ("N0", 0, 4, 2, 0.0, 0.0, "small"),
    ("rows", 700, 100, 40, 0.1, 0.1, "big"),
    ("multi-block-C", 5, 8200, 3, 0.1, 0.0, "big"),
]


def _check_grad(got, truth_grad, dtype, eager_grad=None):
    got = got.double().cpu()
    if dtype in LOW_PRECISION:
        err = (got - truth_grad).abs().max() if got.numel() else torch.tensor(0.0)
        err_eager = (eager_grad.double() - truth_grad).abs().max() if got.numel() else torch.tensor(0.0)
        assert err <= 2 * err_eager + 1e-3 * (1 + truth_grad.abs().max() if got.numel() else 1), (
            float(err),
            float(err_eager),
        )
    else:
        torch.testing.assert_close(got, truth_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
@pytest.mark.parametrize("weighted", [False, True], ids=["loss_sum", "weighted_loss"])
def test_gradients(backend_device, case, dtype, weighted):
    backend, device = backend_device
    _, n, c, g, ls, ignore_frac, size = case
    if backend == "triton" and device == "cpu" and (size == "big" or dtype == torch.float64):
        pytest.skip("the Triton interpreter runs the small cases (and no float64)")
    logits, target, group = _make(n, c, g, dtype, ignore_frac=ignore_frac, seed=7 + n)
    gen = torch.Generator().manual_seed(1)
    up = torch.randn(g, generator=gen, dtype=torch.float64)
    w = torch.rand(g, generator=gen, dtype=torch.float64)

    x = logits.to(device).requires_grad_()
    kw = dict(label_smoothing=ls, backend=backend)
    if weighted:
        out = group_cross_entropy(x, target.to(device), group.to(device), g, group_weight=w.float().to(device), **kw)
        # Both outputs differentiable at once: weighted_loss (saved gradient) and loss_sum.
        obj = 2.0 * out.weighted_loss + (out.loss_sum * up.to(out.loss_sum.dtype).to(device)).sum()
        coef = 2.0 * w.float().double() + up.to(out.loss_sum.dtype).double()
    else:
        out = group_cross_entropy(x, target.to(device), group.to(device), g, **kw)
        obj = (out.loss_sum * up.to(out.loss_sum.dtype).to(device)).sum()
        coef = up.to(out.loss_sum.dtype).double()
    obj.backward()
    assert x.grad.dtype == dtype and x.grad.shape == logits.shape

    truth, xt = _truth(logits, target, group, g, label_smoothing=ls)
    if n:
        (truth * coef).sum().backward()
        truth_grad = xt.grad
    else:
        truth_grad = torch.zeros(0, c, dtype=torch.float64)
    eager_grad = None
    if dtype in LOW_PRECISION and n:
        eager, xe = _eager_low_precision(logits, target, group, g, label_smoothing=ls)
        (eager * coef.to(dtype)).sum().backward()
        eager_grad = xe.grad
    _check_grad(x.grad, truth_grad, dtype, eager_grad)
    if weighted:
        torch.testing.assert_close(
            out.weighted_loss.detach().cpu().double(), (truth * w.float().double()).sum(), rtol=1e-3, atol=1e-3
        )


def test_weighted_loss_alone_and_with_weight_grad(backend_device):
    backend, device = backend_device
    logits, target, group = _make(30, 7, 4, ignore_frac=0.2, seed=2)
    x = logits.to(device).requires_grad_()
    w = torch.rand(4, device=device, requires_grad=True)
    out = _run(backend, device, x, target, group, 4, group_weight=w)
    (3.0 * out.weighted_loss).backward()
    xr = logits.detach().clone().requires_grad_()
    wr = w.detach().cpu().clone().requires_grad_()
    ref = reference.group_cross_entropy(xr, target, group, 4)
    (3.0 * (ref[0] * wr).sum()).backward()
    torch.testing.assert_close(x.grad.cpu(), xr.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad.cpu(), wr.grad, rtol=1e-5, atol=1e-5)


def test_weighted_loss_without_grad(backend_device):
    backend, device = backend_device
    logits, target, group = _make(20, 5, 3, seed=4)
    w = torch.rand(3)
    with torch.no_grad():
        out = _run(backend, device, logits, target, group, 3, group_weight=w.to(device))
    torch.testing.assert_close(out.weighted_loss.cpu(), (out.loss_sum.cpu() * w).sum())


def test_retain_graph_backward_twice():
    logits, target, group = _make(10, 6, 3, seed=8)
    x = logits.requires_grad_()
    out = group_cross_entropy(x, target, group, 3, group_weight=torch.rand(3), backend="cpp")
    out.weighted_loss.backward(retain_graph=True)
    first = x.grad.clone()
    out.weighted_loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)


@pytest.mark.parametrize("ls", [0.0, 0.25])
def test_gradcheck_float64(ls):
    logits, target, group = _make(9, 6, 3, torch.float64, ignore_frac=0.2, seed=9)
    w = torch.rand(3, dtype=torch.float64)
    x = logits.requires_grad_()

    def loss_sum(x):
        return group_cross_entropy(x, target, group, 3, label_smoothing=ls, backend="cpp").loss_sum

    def weighted(x, w):
        out = group_cross_entropy(x, target, group, 3, label_smoothing=ls, group_weight=w, backend="cpp")
        return out.weighted_loss, out.loss_sum

    assert torch.autograd.gradcheck(loss_sum, (x,))
    assert torch.autograd.gradcheck(weighted, (x, w.requires_grad_()))


def test_opcheck_cpp_ops():
    logits, target, group = _make(13, 7, 4, ignore_frac=0.2, seed=10)
    w = torch.rand(4)
    ops = torch.ops.ceag
    for x in (logits, logits.clone().requires_grad_()):
        torch.library.opcheck(ops.group_cross_entropy.default, (x, target, group, 4, 0.1, -100))
        torch.library.opcheck(ops.weighted_group_cross_entropy.default, (x, target, group, w, 0.1, -100))
    lse = ops.group_cross_entropy(logits, target, group, 4, 0.1, -100)[4]
    torch.library.opcheck(ops.group_cross_entropy_backward.default, (torch.randn(4), logits, target, group, lse, 0.1, -100))
    gl = ops.weighted_group_cross_entropy(logits, target, group, w, 0.0, -100)[5]
    loss_sum = torch.rand(4, requires_grad=True)
    torch.library.opcheck(ops._weighted_loss_from_grad.default, (loss_sum, w, logits.clone().requires_grad_(), gl))


@pytest.mark.parametrize("threads", [1, 2])
def test_deterministic_across_threads(threads):
    logits, target, group = _make(6000, 30, 257, ignore_frac=0.1, seed=12)
    w = torch.rand(257)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        base = torch.ops.ceag.weighted_group_cross_entropy(logits, target, group, w, 0.1, -100)
        torch.set_num_threads(threads)
        for _ in range(2):
            again = torch.ops.ceag.weighted_group_cross_entropy(logits, target, group, w, 0.1, -100)
            for a, b in zip(base, again):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(prev)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 70),
    c=st.integers(2, 70),
    g=st.integers(1, 20),
    ls=st.sampled_from([0.0, 0.1]),
    ignore=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_random_shapes(backend_device, n, c, g, ls, ignore, seed):
    backend, device = backend_device
    logits, target, group = _make(n, c, g, ignore_frac=ignore, seed=seed)
    x = logits.to(device).requires_grad_()
    out = _run(backend, device, x, target, group, g, label_smoothing=ls)
    _check_stats(out, logits, target, group, g, label_smoothing=ls)
    # grad = up_g * (softmax - target dist): its fp32 rounding error scales with |up_g|, so
    # upstream gradients in [-1, 1] (seeded) keep the fixed tolerance meaningful.
    up = torch.rand(g, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    (out.loss_sum * up.to(device)).sum().backward()
    xr = logits.detach().clone().requires_grad_()
    ref = reference.group_cross_entropy(xr, target, group, g, label_smoothing=ls)
    if n:
        (ref[0] * up).sum().backward()
        torch.testing.assert_close(x.grad.cpu(), xr.grad, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compile_backend):
    logits, target, group = _make(50, 12, 6, ignore_frac=0.1, seed=13)
    w = torch.rand(6)
    up = torch.randn(6)

    def step(x, target, group, w):
        out = group_cross_entropy(x, target, group, 6, label_smoothing=0.1, group_weight=w)
        obj = out.weighted_loss + (out.loss_sum * up).sum()
        return obj, out.correct, out.count, out.sample_correct

    compiled = torch.compile(step, fullgraph=True, backend=compile_backend)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got, want = compiled(x1, target, group, w), step(x2, target, group, w)
    got[0].backward()
    want[0].backward()
    torch.testing.assert_close(got[0], want[0])
    for a, b in zip(got[1:], want[1:]):
        assert torch.equal(a, b)
    torch.testing.assert_close(x1.grad, x2.grad)


# ----------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------


def _bad_inputs():
    logits, target, group = _make(6, 4, 3, seed=1)
    return [
        ("logits-1d", dict(logits=logits[0]), "logits"),
        ("logits-int", dict(logits=logits.long()), "logits"),
        ("logits-no-classes", dict(logits=logits[:, :0]), "logits"),
        ("target-length", dict(target=target[:5]), "target"),
        ("target-float", dict(target=target.float()), "target"),
        ("target-2d", dict(target=target[:, None]), "target"),
        ("target-too-large", dict(target=torch.full_like(target, 4)), "target"),
        ("target-negative", dict(target=torch.full_like(target, -1)), "target"),
        ("group-length", dict(group=group[:4]), "group"),
        ("group-float", dict(group=group.float()), "group"),
        ("group-too-large", dict(group=torch.full_like(group, 3)), "group"),
        ("group-negative", dict(group=torch.full_like(group, -2)), "group"),
        ("group-device", dict(group=group.to("meta")), "group"),
        ("num-groups-zero", dict(num_groups=0), "num_groups"),
        ("smoothing", dict(label_smoothing=1.5), "label_smoothing"),
        ("weight-length", dict(group_weight=torch.rand(2)), "group_weight"),
        ("weight-int", dict(group_weight=torch.ones(3, dtype=torch.long)), "group_weight"),
        ("backend", dict(backend="nope"), "backend"),
    ], (logits, target, group)


@pytest.mark.parametrize("idx", range(len(_bad_inputs()[0])), ids=[b[0] for b in _bad_inputs()[0]])
@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_bad_inputs_name_the_argument(idx, backend):
    cases, (logits, target, group) = _bad_inputs()
    _, override, name = cases[idx]
    kw = dict(logits=logits, target=target, group=group, num_groups=3, backend=backend)
    kw.update(override)
    args = [kw.pop(k) for k in ("logits", "target", "group", "num_groups")]
    with pytest.raises((ValueError, TypeError, RuntimeError), match=name):
        group_cross_entropy(*args, **kw)


def test_cpp_kernels_check_ranges_themselves():
    logits, target, group = _make(6, 4, 3, seed=1)
    with pytest.raises(RuntimeError, match="target"):
        torch.ops.ceag.group_cross_entropy(logits, target + 4, group, 3, 0.0, -100)
    with pytest.raises(RuntimeError, match="group"):
        torch.ops.ceag.group_cross_entropy(logits, target, group - 5, 3, 0.0, -100)
    with pytest.raises(RuntimeError, match="num_groups"):
        torch.ops.ceag.group_cross_entropy(logits, target, group, 0, 0.0, -100)
    with pytest.raises(RuntimeError, match="group_weight"):
        torch.ops.ceag.weighted_group_cross_entropy(logits, target, group, torch.rand(3, 1), 0.0, -100)
    with pytest.raises(RuntimeError, match="lse"):
        torch.ops.ceag.group_cross_entropy_backward(torch.rand(3), logits, target, group, torch.rand(5), 0.0, -100)
