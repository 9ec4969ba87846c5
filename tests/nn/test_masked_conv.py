"""ceag.nn.MaskedConv2d: a drop-in nn.Conv2d computing conv2d(x, weight * mask)."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ceag.nn import MaskedConv2d

# (in, out, kernel, kwargs): one row per nn.Conv2d feature the masked layer must keep.
CONFIGS = [
    (3, 5, 3, {}),
    (4, 6, (3, 2), {"stride": 2, "padding": 1, "bias": False}),
    (4, 6, 3, {"dilation": 2, "padding": "same"}),
    (4, 8, 3, {"groups": 2, "padding": 1, "padding_mode": "reflect"}),
    (2, 3, 1, {"stride": (1, 2), "padding_mode": "circular", "padding": 1}),
]
IDS = ["plain", "stride-pad-nobias", "dilation-same", "groups-reflect", "1x1-circular"]


def _grads(out, tensors):
    return torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), tensors)


@pytest.mark.parametrize("cin, cout, k, kw", CONFIGS, ids=IDS)
def test_full_mask_is_nn_conv2d(cin, cout, k, kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, **kw)
    mc = MaskedConv2d.from_conv(conv)
    assert mc.weight is conv.weight and mc.bias is conv.bias
    assert mc.mask.dtype == torch.bool and mc.mask.shape == conv.weight.shape and mc.mask.all()
    x = torch.randn(2, cin, 9, 8, requires_grad=True)
    y, y_ref = mc(x), conv(x)
    torch.testing.assert_close(y, y_ref)
    params = [x, conv.weight] + ([conv.bias] if conv.bias is not None else [])
    for a, b in zip(_grads(y, params), _grads(y_ref, params)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cin, cout, k, kw", CONFIGS, ids=IDS)
def test_masked_matches_conv2d_of_masked_weight(cin, cout, k, kw):
    torch.manual_seed(1)
    mc = MaskedConv2d(cin, cout, k, **kw)
    mask = torch.rand(mc.weight.shape) < 0.3
    mask.view(-1)[:2] = torch.tensor([True, False])
    mc.set_mask(mask)
    ref = nn.Conv2d(cin, cout, k, **kw)  # reference: same options, weight * mask by hand
    ref.load_state_dict({n: p for n, p in mc.state_dict().items() if n != "mask"})
    x = torch.randn(3, cin, 7, 10, requires_grad=True)
    w = ref.weight
    y = mc(x)
    y_ref = ref._conv_forward(x, w * mask, ref.bias)
    if ref.padding_mode == "zeros":  # also against the functional op directly
        torch.testing.assert_close(y, F.conv2d(x, mc.weight * mask, mc.bias, mc.stride, mc.padding, mc.dilation, mc.groups))
    torch.testing.assert_close(y, y_ref)
    g = _grads(y, [x, mc.weight])
    g_ref = _grads(y_ref, [x, w])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)
    assert (g[1][~mask] == 0).all() and (g[1][mask] != 0).any()


def test_from_conv_keeps_options_mask_and_mode():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, bias=False, dtype=torch.float64)
    conv.eval()
    mask = torch.rand(conv.weight.shape) < 0.5
    mc = MaskedConv2d.from_conv(conv, mask)
    assert (mc.stride, mc.padding, mc.groups, mc.bias) == ((2, 2), (1, 1), 2, None)
    assert mc.weight.dtype == torch.float64 and not mc.training
    assert torch.equal(mc.mask, mask) and mc.mask is not mask
    with pytest.raises(TypeError, match="conv must be an nn.Conv2d"):
        MaskedConv2d.from_conv(nn.Linear(2, 2))


def test_set_mask_validates_and_repr():
    mc = MaskedConv2d(2, 3, 3)
    with pytest.raises(TypeError, match="mask must be bool"):
        mc.set_mask(torch.ones(3, 2, 3, 3))
    with pytest.raises(ValueError, match="mask must have weight's shape"):
        mc.set_mask(torch.ones(3, 2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        mc.set_mask(True)
    mask = torch.zeros(3, 2, 3, 3, dtype=torch.bool)
    mask[0] = True
    mc.set_mask(mask)
    assert mc.density == pytest.approx(1 / 3)
    assert "density=0.3333" in repr(mc) and "kernel_size=(3, 3)" in repr(mc)


def test_state_dict_round_trip():
    torch.manual_seed(3)
    a = MaskedConv2d(3, 4, 3, padding=1, mask=torch.rand(4, 3, 3, 3) < 0.4)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = MaskedConv2d(3, 4, 3, padding=1)
    b.load_state_dict(torch.load(buf))
    assert set(a.state_dict()) == {"weight", "bias", "mask"}
    assert torch.equal(a.mask, b.mask) and not b.mask.all()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(a(x), b(x))
