"""ceag.ops.masked_linear: every backend against the reference (ceag.ops.reference).

Tolerances follow the flash-attention rule: a backend's error against a float64 reference must
be at most 2x the error of eager PyTorch at the same precision, plus a small atol per dtype.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ceag.ops import MaskLayout, masked_linear, reference

ml_module = importlib.import_module("ceag.ops.masked_linear")  # the module, not the function

ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}

# (B, N, K, density): B=0/1, odd sizes, N and K not multiples of 8/16/32/64, batch tiles > 1.
CASES = [
    (1, 1, 1, 1.0),
    (0, 5, 7, 0.5),
    (1, 17, 33, 0.3),
    (7, 13, 29, 0.0),
    (13, 31, 63, 0.1),
    (33, 64, 45, 1.0),
    (65, 19, 130, 0.05),
    (130, 47, 37, 0.6),
]
TRITON_MAX = 64  # the interpreter is slow: Triton runs only the cases with B, N, K <= this


def _inputs(B, N, K, density, dtype, device="cpu", bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, K, generator=g, dtype=torch.float64)
    w = torch.randn(N, K, generator=g, dtype=torch.float64)
    b = torch.randn(N, generator=g, dtype=torch.float64) if bias else None
    mask = torch.rand(N, K, generator=g) < density
    x, w = x.to(device, dtype), w.to(device, dtype)
    b = b.to(device, dtype) if b is not None else None
    return x, w, mask.to(device), b


def _close(name, out, ref64, eager, dtype):
    """Flash-attention rule: |out - ref64| <= 2 |eager - ref64| + atol, elementwise max."""
    assert out.shape == ref64.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert out.dtype == dtype, f"{name}: dtype {out.dtype} != {dtype}"
    if out.numel() == 0:
        return
    err = (out.double().cpu() - ref64.cpu()).abs()
    eager_err = (eager.double().cpu() - ref64.cpu()).abs().max().item()
    bound = 2 * eager_err + ATOL[dtype]
    if err.max().item() > bound:
        worst = err.flatten().topk(min(5, err.numel()))
        rows = [
            f"  at {tuple(int(i) for i in torch.unravel_index(torch.tensor(j), err.shape))}: "
            f"got {out.flatten()[j].item():.6g}, ref {ref64.flatten()[j].item():.6g}"
            for j in worst.indices.tolist()
        ]
        pytest.fail(
            f"{name}: max error {err.max().item():.3g} > bound {bound:.3g} "
            f"(eager {dtype} error {eager_err:.3g})\n" + "\n".join(rows)
        )


def _run_and_compare(backend, device, x, w, mask, b, dtype, layout=None, seed=1):
    """Forward and backward of the backend vs the reference (float64 and eager at dtype)."""
    leaves = [t.detach().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    leaves_eager = [t.detach().requires_grad_() for t in leaves]

    def split(ts):
        return ts[0], ts[1], (ts[2] if b is not None else None)

    xx, ww, bb = split(leaves)
    y = masked_linear(xx, ww, mask, bb, layout=layout, backend=backend)
    x64, w64, b64 = split(leaves64)
    y64 = reference.masked_linear(x64, w64, mask, b64)
    xe, we, be = split(leaves_eager)
    ye = reference.masked_linear(xe, we, mask, be)
    _close("y", y, y64, ye, dtype)

    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad(y, leaves, gy.to(device, dtype), allow_unused=True)
    grads64 = torch.autograd.grad(y64, leaves64, gy.to(device), allow_unused=True)
    grads_e = torch.autograd.grad(ye, leaves_eager, gy.to(device, dtype), allow_unused=True)
    for name, g, g64, ge, leaf in zip(("grad_x", "grad_weight", "grad_bias"), grads, grads64, grads_e, leaves):
        if g is None:
            g = torch.zeros_like(leaf)
        g64 = torch.zeros_like(leaf, dtype=torch.float64) if g64 is None else g64
        ge = torch.zeros_like(leaf) if ge is None else ge
        _close(name, g, g64, ge, dtype)
    gw = grads[1]
    if gw is not None and (~mask).any():
        assert (gw[~mask] == 0).all(), "grad_weight must be exactly zero where mask is 0"
    return y, grads


@pytest.fixture
def force_path(monkeypatch):
    """Force the CPU kernel's sparse or dense path through DENSE_THRESHOLD."""

    def force(path: str):
        monkeypatch.setattr(ml_module, "DENSE_THRESHOLD", {"sparse": 1.01, "dense": 0.0, "auto": ml_module.DENSE_THRESHOLD}[path])

    return force


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-N{}-K{}-d{}".format(*c))
def test_matches_reference(backend_device, case, dtype, force_path):
    backend, device = backend_device
    B, N, K, density = case
    if backend == "triton" and device == "cpu":
        if max(B, N, K) > TRITON_MAX:
            pytest.skip("Triton interpreter: small shapes only")
        if dtype not in (torch.float32, torch.bfloat16):
            pytest.skip("Triton interpreter: fp32/bf16 only")
    x, w, mask, b = _inputs(B, N, K, density, dtype, device)
    layout = MaskLayout.from_mask(mask) if device == "cpu" else None
    # The CPU kernel has a sparse and a dense path: check both on every case.
    for path in ("sparse", "dense") if backend == "cpp" else ("auto",):
        force_path(path)
        _run_and_compare(backend, device, x, w, mask, b, dtype, layout=layout)


@pytest.mark.parametrize("mask_kind", ["empty", "full", "rows_masked", "cols_masked", "single"])
@pytest.mark.parametrize("path", ["sparse", "dense", "auto"])
def test_edge_masks(backend_device, mask_kind, path, force_path):
    backend, device = backend_device
    force_path(path)
    dtype = torch.float32
    x, w, mask, b = _inputs(9, 21, 35, 0.5, dtype, device)
    if mask_kind == "empty":
        mask = torch.zeros_like(mask)
    elif mask_kind == "full":
        mask = torch.ones_like(mask)
    elif mask_kind == "rows_masked":
        mask[::3] = False
    elif mask_kind == "cols_masked":
        mask[:, 1::2] = False
    else:
        mask = torch.zeros_like(mask)
        mask[4, 7] = True
    # no layout: the op builds one on the fly below the threshold
    _run_and_compare(backend, device, x, w, mask, b, dtype)


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_noncontiguous_3d_and_no_bias(backend_device, path, force_path):
    backend, device = backend_device
    force_path(path)
    dtype = torch.float32
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 23, 6, generator=g)
    x = base.transpose(1, 2).to(device)  # [4, 6, 23], non-contiguous
    assert not x.is_contiguous()
    w = torch.randn(11, 23, generator=g).to(device)
    mask = (torch.rand(11, 23, generator=g) < 0.3).to(device)
    y, _ = _run_and_compare(backend, device, x, w, mask, None, dtype)
    assert y.shape == (4, 6, 11)
    # 1-D x
    y1 = masked_linear(x[0, 0], w, mask, backend=backend)
    torch.testing.assert_close(y1, reference.masked_linear(x[0, 0], w, mask), rtol=1e-5, atol=1e-5)
    # strided weight
    wt = torch.randn(23, 11, generator=g).to(device).t()
    torch.testing.assert_close(
        masked_linear(x, wt, mask, backend=backend), reference.masked_linear(x, wt, mask), rtol=1e-5, atol=1e-5
    )


def test_layout_matches_torch_sparse_csr():
    mask = torch.rand(37, 53) < 0.2
    mask[5] = False
    mask[:, 9] = False
    lay = MaskLayout.from_mask(mask)
    csr = mask.to_sparse_csr()
    csc = mask.t().contiguous().to_sparse_csr()
    assert lay.shape == (37, 53) and lay.nnz == int(mask.sum())
    assert lay.density == pytest.approx(mask.float().mean().item())
    for got, want in [
        (lay.csr_ptr, csr.crow_indices()),
        (lay.csr_idx, csr.col_indices()),
        (lay.csc_ptr, csc.crow_indices()),
        (lay.csc_idx, csc.col_indices()),
    ]:
        assert got.dtype == torch.int32
        assert torch.equal(got.long(), want.long())
    empty = MaskLayout.from_mask(torch.zeros(3, 4, dtype=torch.bool))
    assert empty.nnz == 0 and empty.density == 0.0 and torch.equal(empty.csr_ptr, torch.zeros(4, dtype=torch.int32))


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_gradcheck_float64(path):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 13, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 13, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(9, 13, generator=g) < 0.4
    lay = MaskLayout.from_mask(mask)
    layout_args = lay.tensors() if path == "sparse" else (None,) * 4
    op = torch.ops.ceag.masked_linear
    assert torch.autograd.gradcheck(lambda x, w, b: op(x, w, mask, b, *layout_args), (x, w, b))
    # CSR only (no CSC): grad_x falls back to the dense path, still correct
    if path == "sparse":
        assert torch.autograd.gradcheck(lambda x, w, b: op(x, w, mask, b, lay.csr_ptr, lay.csr_idx, None, None), (x, w, b))


def _opcheck_samples():
    g = torch.Generator().manual_seed(7)
    out = []
    for B, N, K, d, dtype in [(5, 7, 9, 0.3, torch.float32), (0, 4, 6, 0.5, torch.float64), (66, 10, 3, 0.9, torch.bfloat16)]:
        x = torch.randn(B, K, generator=g).to(dtype)
        w = torch.randn(N, K, generator=g).to(dtype)
        b = torch.randn(N, generator=g).to(dtype)
        mask = torch.rand(N, K, generator=g) < d
        lay = MaskLayout.from_mask(mask)
        gy = torch.randn(B, N, generator=g).to(dtype)
        out.append((x, w, b, mask, lay, gy))
    return out


@pytest.mark.parametrize("layout", ["full", "csr", "none"])
def test_opcheck(layout):
    from torch.library import opcheck

    for x, w, b, mask, lay, gy in _opcheck_samples():
        layout_args = {
            "full": lay.tensors(),
            "csr": (lay.csr_ptr, lay.csr_idx, None, None),
            "none": (None,) * 4,
        }[layout]
        grad = x.dtype != torch.bfloat16
        xs, ws, bs = (t.clone().requires_grad_(grad) for t in (x, w, b))
        opcheck(torch.ops.ceag.masked_linear.default, (xs, ws, mask, bs, *layout_args))
        opcheck(torch.ops.ceag.masked_linear.default, (xs, ws, mask, None, *layout_args))
        cp, ci = (lay.csc_ptr, lay.csc_idx) if layout != "none" else (None, None)
        rp, ri = (lay.csr_ptr, lay.csr_idx) if layout != "none" else (None, None)
        opcheck(torch.ops.ceag.masked_linear_grad_input.default, (gy, w, mask, cp, ci))
        opcheck(torch.ops.ceag.masked_linear_grad_weight.default, (gy, x, mask, rp, ri))


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(0, 80),
    N=st.integers(1, 70),
    K=st.integers(1, 70),
    density=st.floats(0.0, 1.0),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_cpp_both_paths(B, N, K, density, bias, seed):
    x, w, mask, b = _inputs(B, N, K, density, torch.float32, bias=bias, seed=seed)
    lay = MaskLayout.from_mask(mask)
    gy = torch.randn(B, N, generator=torch.Generator().manual_seed(seed))
    y_ref = reference.masked_linear(x.double(), w.double(), mask, b.double() if b is not None else None)
    gx_ref = gy.double() @ (w.double() * mask)
    gw_ref = (gy.double().t() @ x.double()) * mask
    ops = torch.ops.ceag
    for sparse in (True, False):
        y = ops.masked_linear(x, w, mask, b, *(lay.tensors() if sparse else (None,) * 4))
        gx = ops.masked_linear_grad_input(gy, w, mask, *((lay.csc_ptr, lay.csc_idx) if sparse else (None, None)))
        gw = ops.masked_linear_grad_weight(gy, x, mask, *((lay.csr_ptr, lay.csr_idx) if sparse else (None, None)))
        tol = dict(rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(y.double(), y_ref, **tol, msg=lambda m: f"y (sparse={sparse}): {m}")
        torch.testing.assert_close(gx.double(), gx_ref, **tol, msg=lambda m: f"grad_x (sparse={sparse}): {m}")
        torch.testing.assert_close(gw.double(), gw_ref, **tol, msg=lambda m: f"grad_w (sparse={sparse}): {m}")
        assert (gw[~mask] == 0).all()


def test_needs_input_grad_only():
    """Backward computes only what is asked for: no grad for a frozen weight or x."""
    x, w, mask, b = _inputs(5, 6, 7, 0.5, torch.float32)
    w.requires_grad_()
    y = masked_linear(x, w, mask, b)
    (gw,) = torch.autograd.grad(y.sum(), [w])
    torch.testing.assert_close(gw, torch.ones(5, 6).t() @ x * mask)
    assert masked_linear(x, w.detach(), mask, b).grad_fn is None


def test_compile_fullgraph():
    x, w, mask, b = _inputs(8, 12, 20, 0.1, torch.float32)
    lay = MaskLayout.from_mask(mask)
    w.requires_grad_()

    def f(x, w, b):
        return masked_linear(x, w, mask, b, layout=lay).relu().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, w, b)
    (g,) = torch.autograd.grad(out, [w])
    out_ref = f(x, w, b)
    (g_ref,) = torch.autograd.grad(out_ref, [w])
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(g, g_ref)


# ----------------------------------------------------------------------------- bad inputs


def _ok():
    x, w, mask, b = _inputs(3, 4, 5, 0.5, torch.float32)
    return x, w, mask, b


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda x, w, m, b: (x[:, :4], w, m, b), ValueError, "weight.shape"),
        (lambda x, w, m, b: (x, w[0], m, b), ValueError, "weight must be 2-D"),
        (lambda x, w, m, b: (x, w, m.float(), b), TypeError, "mask must have dtype"),
        (lambda x, w, m, b: (x, w, m[:, :4], b), ValueError, "mask must have weight's shape"),
        (lambda x, w, m, b: (x, w.double(), m, b), TypeError, "weight must have dtype"),
        (lambda x, w, m, b: (x.long(), w, m, b), TypeError, "x must have dtype"),
        (lambda x, w, m, b: (x, w, m, b[:3]), ValueError, "bias must have shape"),
        (lambda x, w, m, b: (x, w, m, b.double()), TypeError, "bias must have dtype"),
        (lambda x, w, m, b: (x, w, m, b.to("meta")), ValueError, "bias is on meta"),
        (lambda x, w, m, b: (x, w.to("meta"), m, b), ValueError, "weight is on meta"),
        (lambda x, w, m, b: (x, w, m, [1.0]), TypeError, "bias must be a torch.Tensor"),
    ],
)
def test_bad_inputs_python(mutate, exc, match):
    x, w, m, b = mutate(*_ok())
    with pytest.raises(exc, match=match):
        masked_linear(x, w, m, b)


def test_bad_layout_and_backend():
    x, w, m, b = _ok()
    with pytest.raises(ValueError, match="layout is for a mask of shape"):
        masked_linear(x, w, m, b, layout=MaskLayout.from_mask(torch.ones(5, 4, dtype=torch.bool)))
    with pytest.raises(TypeError, match="layout must be a MaskLayout"):
        masked_linear(x, w, m, b, layout=(1, 2))
    with pytest.raises(ValueError, match="backend must be one of"):
        masked_linear(x, w, m, b, backend="fortran")
    with pytest.raises(TypeError, match="mask must have dtype"):
        MaskLayout.from_mask(m.int())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, w, m, b, L: torch.ops.ceag.masked_linear(x, w, m.float(), b, None, None, None, None), "mask must be bool"),
        (lambda x, w, m, b, L: torch.ops.ceag.masked_linear(x[:, :2], w, m, b, None, None, None, None), "x must have"),
        (lambda x, w, m, b, L: torch.ops.ceag.masked_linear(x, w.double(), m, b, None, None, None, None), "weight dtype"),
        (lambda x, w, m, b, L: torch.ops.ceag.masked_linear(x, w, m, b[:2], None, None, None, None), "bias must have shape"),
        (lambda x, w, m, b, L: torch.ops.ceag.masked_linear(x, w, m, b, L.csr_ptr, None, None, None), "given together"),
        (
            lambda x, w, m, b, L: torch.ops.ceag.masked_linear(x, w, m, b, L.csr_ptr.long(), L.csr_idx, None, None),
            "csr_ptr must be int32",
        ),
        (
            lambda x, w, m, b, L: torch.ops.ceag.masked_linear(x, w, m, b, L.csr_ptr[:-1], L.csr_idx, None, None),
            "csr_ptr must have shape",
        ),
        (lambda x, w, m, b, L: torch.ops.ceag.masked_linear(x, w, m, b, L.csr_ptr, L.csr_idx + 100, None, None), "out of range"),
        (lambda x, w, m, b, L: torch.ops.ceag.masked_linear_grad_input(x, w, m, None, None), "grad_y must have"),
        (
            lambda x, w, m, b, L: torch.ops.ceag.masked_linear_grad_input(torch.ones(3, 4), w, m, L.csc_ptr, L.csc_idx[:1]),
            "csc_ptr must start at 0",
        ),
        (lambda x, w, m, b, L: torch.ops.ceag.masked_linear_grad_weight(torch.ones(2, 4), x, m, None, None), "same batch size"),
        (
            lambda x, w, m, b, L: torch.ops.ceag.masked_linear_grad_weight(torch.ones(3, 4).double(), x, m, None, None),
            "grad_y dtype",
        ),
    ],
)
def test_bad_inputs_cpp(call, match):
    x, w, m, b = _ok()
    m = m.clone()
    m[0, 0] = True
    lay = MaskLayout.from_mask(m)
    with pytest.raises(RuntimeError, match=match):
        call(x, w, m, b, lay)
