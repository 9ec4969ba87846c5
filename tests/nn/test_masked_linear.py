"""ceag.nn.MaskedLinear: a drop-in nn.Linear with a bool mask buffer and a cached layout."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from ceag.nn import MaskedLinear
from ceag.ops import reference


@pytest.mark.parametrize("bias", [True, False])
def test_full_mask_is_nn_linear(backend_device, monkeypatch, bias):
    backend, device = backend_device
    monkeypatch.setenv("CEAG_BACKEND", backend)
    torch.manual_seed(0)
    lin = nn.Linear(19, 13, bias=bias).to(device)
    ml = MaskedLinear.from_linear(lin)
    assert ml.weight is lin.weight and ml.mask.all() and ml.mask.dtype == torch.bool
    x = torch.randn(2, 5, 19, device=device, requires_grad=True)
    y, y_ref = ml(x), lin(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(y.sum(), [x, ml.weight])
    g_ref = torch.autograd.grad(y_ref.sum(), [x, lin.weight])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_masked_forward_backward_and_repr(backend_device, monkeypatch):
    backend, device = backend_device
    monkeypatch.setenv("CEAG_BACKEND", backend)
    torch.manual_seed(1)
    ml = MaskedLinear(24, 10, device=device)
    mask = torch.rand(10, 24, device=device) < 0.2
    ml.set_mask(mask)
    x = torch.randn(7, 24, device=device)
    y = ml(x)
    torch.testing.assert_close(y, reference.masked_linear(x, ml.weight, mask, ml.bias), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert (ml.weight.grad[~mask] == 0).all()
    assert f"density={mask.float().mean().item():.4f}" in repr(ml)
    assert "in_features=24, out_features=10" in repr(ml)


def test_layout_cache_rebuilds_on_mask_change():
    torch.manual_seed(2)
    ml = MaskedLinear(40, 30)
    ml.set_mask(torch.rand(30, 40) < 0.1)
    lay = ml.refresh_layout()
    assert lay is not None and lay.nnz == int(ml.mask.sum())
    x = torch.randn(4, 40)
    ml(x)
    assert ml.refresh_layout() is lay, "unchanged mask must reuse the cached layout"
    ml.mask[0] = False  # in-place edit bumps the version counter
    y = ml(x)
    assert ml._layout is not lay and ml._layout.nnz == int(ml.mask.sum())
    torch.testing.assert_close(y, reference.masked_linear(x, ml.weight, ml.mask, ml.bias))
    lay2 = ml._layout
    ml.set_mask(torch.rand(30, 40) < 0.05)
    assert ml._layout is not lay2 and ml._layout.nnz == int(ml.mask.sum())
    ml.set_mask(torch.ones(30, 40, dtype=torch.bool))
    assert ml._layout is None  # dense path above the threshold
    ml.load_state_dict({**ml.state_dict(), "mask": torch.rand(30, 40) < 0.1})
    y = ml(x)
    assert ml._layout is not None and ml._layout.nnz == int(ml.mask.sum())
    torch.testing.assert_close(y, reference.masked_linear(x, ml.weight, ml.mask, ml.bias))


def test_set_mask_validates():
    ml = MaskedLinear(4, 3)
    with pytest.raises(TypeError, match="mask must be bool"):
        ml.set_mask(torch.ones(3, 4))
    with pytest.raises(ValueError, match="mask must have weight's shape"):
        ml.set_mask(torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        ml.set_mask([[True] * 4] * 3)
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        MaskedLinear.from_linear(nn.Conv1d(1, 1, 1))


def test_state_dict_round_trip():
    torch.manual_seed(3)
    a = MaskedLinear(12, 6, mask=torch.rand(6, 12) < 0.3)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = MaskedLinear(12, 6)
    b.load_state_dict(torch.load(buf))
    assert set(a.state_dict()) == {"weight", "bias", "mask"}
    assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)
    x = torch.randn(3, 12)
    torch.testing.assert_close(a(x), b(x))


def test_from_linear_with_mask_and_dtype():
    lin = nn.Linear(8, 5, dtype=torch.float64)
    mask = torch.rand(5, 8) < 0.5
    ml = MaskedLinear.from_linear(lin, mask)
    assert ml.weight.dtype == torch.float64 and torch.equal(ml.mask, mask)
    x = torch.randn(2, 8, dtype=torch.float64)
    torch.testing.assert_close(ml(x), reference.masked_linear(x, lin.weight, mask, lin.bias))


@pytest.mark.parametrize("density", [0.05, 1.0])
def test_compile_fullgraph(density):
    torch.manual_seed(4)
    model = nn.Sequential(MaskedLinear(32, 16), nn.ReLU(), MaskedLinear(16, 4))
    model[0].set_mask(torch.rand(16, 32) < density)
    model[2].set_mask(torch.rand(4, 16) < density)
    x = torch.randn(5, 32)
    y_eager = model(x)
    g_eager = torch.autograd.grad(y_eager.sum(), [model[0].weight])[0]
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    y = compiled(x)
    g = torch.autograd.grad(y.sum(), [model[0].weight])[0]
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_eager, rtol=1e-5, atol=1e-5)
    assert (g[~model[0].mask] == 0).all()
