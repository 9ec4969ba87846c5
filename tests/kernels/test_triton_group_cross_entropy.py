"""Triton group cross-entropy: the paths the op tests do not pick (class chunks with C larger
than the chunk, atomics vs deterministic partials, bf16 without bf16 atomics, the
gradient written in the forward) and torch.compile over the triton_op. Small shapes: runs
under TRITON_INTERPRET=1 on CPU without a GPU."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from ceag.ops import group_cross_entropy, reference  # noqa: E402

K = pytest.importorskip("ceag.kernels.group_cross_entropy")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1", allow_module_level=True)

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-5, atol=1e-4)}


def _make(n, c, g, dtype=torch.float32, ignore_frac=0.1, seed=0, index_dtype=torch.int64):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, c, generator=gen)).to(dtype)
    target = torch.randint(0, c, (n,), generator=gen)
    target[torch.rand(n, generator=gen) < ignore_frac] = -100
    group = torch.randint(0, g, (n,), generator=gen)
    return logits.to(DEVICE), target.to(DEVICE, index_dtype), group.to(DEVICE, index_dtype)


def _check(out, logits, target, group, g, ls, dtype):
    ref = reference.group_cross_entropy(logits.cpu(), target.cpu().long(), group.cpu().long(), g, label_smoothing=ls)
    torch.testing.assert_close(out[0].cpu(), ref[0], **TOL[dtype])
    for a, b in zip(out[1:4], ref[1:4]):
        assert torch.equal(a.cpu(), b)
    lse = torch.logsumexp(logits.cpu().double(), dim=1)
    torch.testing.assert_close(out[4].cpu().double(), lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("atomic", [False, True], ids=["partials", "atomics"])
@pytest.mark.parametrize("ls", [0.0, 0.15])
def test_chunked_classes_both_reductions(dtype, atomic, ls):
    """C = 37 swept in chunks of 8 (5 chunks, a ragged last one), both per-group reductions."""
    g = 5
    logits, target, group = _make(45, 37, g, dtype)
    out = K.forward(logits, target, group, g, ls, -100, block_c=8, atomic=atomic)
    _check(out, logits, target, group, g, ls, dtype)


def test_argmax_first_max_across_chunks():
    logits = torch.zeros(4, 20, device=DEVICE)
    logits[:, 3] = logits[:, 15] = 1.0  # equal maxima in chunk 0 and chunk 1
    logits[2, 15] = 2.0
    target = torch.tensor([3, 15, 15, 15], device=DEVICE)
    group = torch.zeros(4, dtype=torch.long, device=DEVICE)
    for block_c in (4, 8, 32):
        out = K.forward(logits, target, group, 1, 0.0, -100, block_c=block_c)
        assert out[3].tolist() == [True, False, True, False]


def test_partials_are_deterministic_and_match_atomics():
    g = 7
    logits, target, group = _make(61, 11, g, seed=3)
    runs = [K.forward(logits, target, group, g, 0.1, -100, atomic=False) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))  # bitwise, every output
    atomics = K.forward(logits, target, group, g, 0.1, -100, atomic=True)
    torch.testing.assert_close(atomics[0], runs[0][0], rtol=1e-6, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(atomics[1:], runs[0][1:]))


def test_default_path_follows_num_groups():
    small, large = K.PARTIALS_MAX_GROUPS, K.PARTIALS_MAX_GROUPS + 1
    for g in (small, large):
        logits, target, group = _make(40, 6, g, seed=g, index_dtype=torch.int32)
        out = torch.ops.ceag.group_cross_entropy_triton(logits, target, group, g, 0.0, -100)
        _check(out, logits, target, group, g, 0.0, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("atomic", [False, True], ids=["partials", "atomics"])
def test_weighted_gradient_in_forward_equals_backward_kernel(dtype, atomic):
    g = 4
    logits, target, group = _make(33, 21, g, dtype, seed=5)
    weight = torch.rand(g, device=DEVICE)
    out = K.forward(logits, target, group, g, 0.2, -100, weight, block_c=8, atomic=atomic)
    _check(out[:5], logits, target, group, g, 0.2, dtype)
    grad = K.backward(weight, logits, target, group, out[4], 0.2, -100, block_c=8)
    assert out[5].dtype == dtype
    torch.testing.assert_close(out[5], grad, rtol=0, atol=0)
    lg = logits.detach().cpu().double().requires_grad_()
    ref = reference.group_cross_entropy(lg, target.cpu().long(), group.cpu().long(), g, label_smoothing=0.2)
    (ref[0] * weight.cpu().double()).sum().backward()
    atol = 1e-6 if dtype == torch.float32 else 4e-3  # bf16 rounding of the stored gradient
    torch.testing.assert_close(out[5].cpu().double(), lg.grad, rtol=0, atol=atol)


def test_empty_and_all_ignored():
    logits, target, group = _make(0, 5, 3)
    out = K.forward(logits, target, group, 3, 0.0, -100)
    assert out[0].shape == (3,) and not out[0].any() and out[3].shape == (0,)
    logits, target, group = _make(9, 5, 3, ignore_frac=1.0)
    out = K.forward(logits, target, group, 3, 0.0, -100, weight := torch.ones(3, device=DEVICE))
    assert not out[0].any() and not out[1].any() and not out[2].any() and not out[5].any()
    del weight


def test_torch_compile_fullgraph():
    g = 5
    logits, target, group = _make(30, 13, g, seed=7)
    w = torch.rand(g, device=DEVICE)

    def step(x):
        out = group_cross_entropy(x, target, group, g, label_smoothing=0.1, group_weight=w, backend="triton")
        return out.weighted_loss + out.loss_sum.square().sum(), out.correct, out.sample_correct

    compiled = torch.compile(step, fullgraph=True, backend="inductor" if DEVICE == "cuda" else "aot_eager")
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got, want = compiled(x1), step(x2)
    got[0].backward()
    want[0].backward()
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    torch.testing.assert_close(x1.grad, x2.grad)
