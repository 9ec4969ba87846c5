"""ceag.ops.compact_linear: the C++ kernels and the reference against a float64 dense GEMM.

Tolerance rule (as tests/ops/test_masked_linear.py): |out - ref64| <= 2 |eager - ref64| + atol,
with eager the dense F.linear at the same precision.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ceag.ops import CompactLayout, compact_linear

ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}

# (B, N, K, density): empty batch, empty mask, full mask, sizes off every tile multiple.
CASES = [
    (1, 1, 1, 1.0),
    (0, 5, 7, 0.5),
    (3, 6, 4, 0.0),
    (1, 17, 33, 0.3),
    (13, 31, 63, 0.1),
    (65, 19, 130, 0.05),
    (130, 47, 37, 0.6),
]


def _inputs(B, N, K, density, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, K, generator=g, dtype=torch.float64)
    mask = torch.rand(N, K, generator=g) < density
    w = torch.randn(N, K, generator=g, dtype=torch.float64) * mask
    b = torch.randn(N, generator=g, dtype=torch.float64)
    return x, w, mask, b


def _close(name, out, ref64, eager, dtype):
    assert out.shape == ref64.shape and out.dtype == dtype, name
    if out.numel() == 0:
        return
    err = (out.double() - ref64).abs().max().item()
    bound = 2 * (eager.double() - ref64).abs().max().item() + ATOL[dtype]
    assert err <= bound, f"{name}: max error {err:.3g} > bound {bound:.3g}"


def _check(B, N, K, density, dtype, backend, seed=0):
    x64, w64, mask, b64 = _inputs(B, N, K, density, torch.float64, seed)
    lay = CompactLayout.from_mask(mask)
    gy64 = torch.randn(B, N, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    # float64 reference: dense GEMMs
    x_r, w_r, b_r = (t.clone().requires_grad_() for t in (x64, w64, b64))
    y_r = F.linear(x_r, w_r, b_r)
    gx_r, gw_r, gb_r = torch.autograd.grad(y_r, (x_r, w_r, b_r), gy64)
    # eager at the test precision
    x_e, w_e, b_e = (t.to(dtype).requires_grad_() for t in (x64, w64, b64))
    y_e = F.linear(x_e, w_e, b_e)
    gx_e, gw_e, _ = torch.autograd.grad(y_e, (x_e, w_e, b_e), gy64.to(dtype))
    # the op
    x, b = x64.to(dtype).requires_grad_(), b64.to(dtype).requires_grad_()
    v = lay.gather(w64).to(dtype).requires_grad_()
    y = compact_linear(x, v, lay, b, backend=backend)
    gx, gv, gb = torch.autograd.grad(y, (x, v, b), gy64.to(dtype))
    _close("y", y, y_r.detach(), y_e.detach(), dtype)
    _close("grad_x", gx, gx_r, gx_e, dtype)
    _close("grad_values", gv, lay.gather(gw_r), lay.gather(gw_e), dtype)
    _close("grad_bias", gb, gb_r, gb_r.to(dtype), dtype)
    assert gv.shape == (lay.nnz,)  # nnz-sized: never a dense [N, K] gradient


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_dense_float64(case, dtype, backend):
    _check(*case, dtype, backend)


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(0, 150),
    N=st.integers(1, 70),
    K=st.integers(1, 140),
    density=st.sampled_from([0.0, 0.01, 0.05, 0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_cpp(B, N, K, density, seed):
    _check(B, N, K, density, torch.float32, "cpp", seed)


def test_layout_round_trips():
    _, w, mask, _ = _inputs(1, 23, 41, 0.2, torch.float64)
    lay = CompactLayout.from_mask(mask)
    assert torch.equal(lay.mask(), mask) and lay.nnz == int(mask.sum())
    assert torch.equal(lay.to_dense(lay.gather(w)), w)
    again = CompactLayout.from_csr(lay.row_ptr, lay.col_idx, lay.shape)
    assert all(torch.equal(a, b) for a, b in zip(again.tensors(), lay.tensors()))
    # csc_to_csr: CSC entry q is the value at (row_idx[q], its column)
    cols = torch.repeat_interleave(torch.arange(41), (lay.col_ptr[1:] - lay.col_ptr[:-1]).long())
    assert torch.equal(lay.positions()[lay.csc_to_csr.long()], lay.row_idx.long() * 41 + cols)


def test_gradcheck_float64():
    x, w, mask, b = _inputs(5, 6, 7, 0.4, torch.float64)
    lay = CompactLayout.from_mask(mask)
    v = lay.gather(w)
    for t in (x, v, b):
        t.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, v, b: compact_linear(x, v, lay, b), (x, v, b))


def test_opcheck():
    from torch.library import opcheck

    x, w, mask, b = _inputs(9, 11, 13, 0.3, torch.float32)
    lay = CompactLayout.from_mask(mask)
    v = lay.gather(w).float()
    xs, vs, bs = (t.clone().requires_grad_() for t in (x.float(), v, b.float()))
    compact_linear(x.float(), v, lay)  # loads the extension and registers the ops
    opcheck(torch.ops.ceag.compact_linear.default, (xs, vs, *lay.tensors(), bs))
    opcheck(torch.ops.ceag.compact_linear.default, (xs, vs, *lay.tensors(), None))
    gy = torch.randn(9, 11)
    opcheck(torch.ops.ceag.compact_linear_grad_input.default, (gy, v, lay.col_ptr, lay.row_idx, lay.csc_to_csr))
    opcheck(torch.ops.ceag.compact_linear_grad_values.default, (gy, x.float(), lay.row_ptr, lay.col_idx))


def test_compile_fullgraph():
    x, w, mask, b = _inputs(8, 10, 12, 0.3, torch.float32)
    lay = CompactLayout.from_mask(mask)
    v = lay.gather(w).float().requires_grad_()
    xf, bf = x.float(), b.float()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, v, b):
        return compact_linear(x, v, lay, b).square().sum()

    out = f(xf, v, bf)
    (g,) = torch.autograd.grad(out, v)
    v2 = v.detach().clone().requires_grad_()
    (g2,) = torch.autograd.grad(compact_linear(xf, v2, lay, bf).square().sum(), v2)
    torch.testing.assert_close(g, g2)


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda a: {**a, "values": a["values"][:-1]}, ValueError, "layout.nnz"),
        (lambda a: {**a, "x": a["x"][:, :-1]}, ValueError, "in_features K"),
        (lambda a: {**a, "values": a["values"].double()}, TypeError, "values"),
        (lambda a: {**a, "layout": "csr"}, TypeError, "CompactLayout"),
        (lambda a: {**a, "bias": a["bias"][:-1]}, ValueError, "bias"),
    ],
)
def test_bad_inputs(mutate, exc, match):
    x, w, mask, b = _inputs(4, 5, 6, 0.5, torch.float32)
    lay = CompactLayout.from_mask(mask)
    args = {"x": x.float(), "values": lay.gather(w).float(), "layout": lay, "bias": b.float()}
    a = mutate(args)
    with pytest.raises(exc, match=match):
        compact_linear(a["x"], a["values"], a["layout"], a["bias"])


def test_bad_csr_is_refused():
    with pytest.raises(ValueError, match="row_ptr must start at 0"):
        CompactLayout.from_csr(torch.tensor([0, 3, 2], dtype=torch.int32), torch.zeros(2, dtype=torch.int32), (2, 4))
    with pytest.raises(ValueError, match=r"col_idx must lie in \[0, 4\)"):
        CompactLayout.from_csr(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([4], dtype=torch.int32), (1, 4))
    with pytest.raises(ValueError, match="strictly ascending"):
        CompactLayout.from_csr(torch.tensor([0, 2], dtype=torch.int32), torch.tensor([1, 1], dtype=torch.int32), (1, 4))
    with pytest.raises(RuntimeError, match="csc_to_csr"):  # the C++ check, below the Python one
        lay = CompactLayout.from_mask(torch.ones(2, 2, dtype=torch.bool))
        bad = torch.tensor([0, 1, 2, 9], dtype=torch.int32)
        torch.ops.ceag.compact_linear_grad_input(torch.ones(1, 2), torch.ones(4), lay.col_ptr, lay.row_idx, bad)


def test_compact_linear_goes_through_dispatch_and_gpu_backends_run_the_reference(monkeypatch):
    """compact_linear once chose its face itself (issue 25); dispatch now routes it, and the
    backends it has no kernels for ("cuda", "triton") come back as its reference."""
    import ceag.ops._registry as registry
    from ceag.ops.compact_linear import COMPACT_LINEAR

    assert registry.dispatch(COMPACT_LINEAR, "cpp", torch.device("cpu")).backend == "cpp"
    for backend in ("cuda", "triton"):
        monkeypatch.setattr(registry, "resolve_backend", lambda b, d, chosen=backend: chosen)
        assert registry.dispatch(COMPACT_LINEAR, backend, torch.device("cpu")) == registry.Route("reference", ())
