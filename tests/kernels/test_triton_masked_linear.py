"""Triton masked linear: what the op tests do not see (tile skipping, its bitmap and cache,
torch.compile over the triton_op). Runs under TRITON_INTERPRET=1 on CPU without a GPU, so
shapes stay small (the interpreter's tiles are 16x16)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from ceag.ops import masked_linear, reference  # noqa: E402
from ceag.prune import block_magnitude_mask  # noqa: E402

K = pytest.importorskip("ceag.kernels.masked_linear")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1", allow_module_level=True)

T = 16 if DEVICE == "cpu" else 128  # a size spanning several tiles of every kernel


def _block_mask(n, k, tile, empty_rows=(), empty_cols=(), seed=0):
    """Random mask with whole tile rows/columns emptied (forces skippable tiles)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, k, generator=g) < 0.5
    for r in empty_rows:
        mask[r * tile[0] : (r + 1) * tile[0]] = False
    for c in empty_cols:
        mask[:, c * tile[1] : (c + 1) * tile[1]] = False
    return mask.to(DEVICE)


def _randn(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, dtype)


def test_occupancy_and_tile_lists():
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[0, 0] = mask[4, 6] = mask[2, 3] = True
    occ = K.occupancy(mask, 2, 3)  # 3 x 3 blocks, edge blocks padded
    want = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert torch.equal(occ, want)
    count, index = K.tile_lists(occ, dim=1)
    assert count.tolist() == [1, 1, 1] and index[:, 0].tolist() == [0, 1, 2]
    occ[0, 2] = True
    count, index = K.tile_lists(occ, dim=0)  # per column block: its non-empty row blocks
    assert count.tolist() == [1, 1, 2]
    assert index[2, :2].tolist() == [0, 2]  # ascending
    assert count.dtype == index.dtype == torch.int32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_skipping_is_bit_identical_to_no_skipping(dtype):
    n, k, b = 4 * T, 3 * T + 5, 2 * T - 3
    tile_f, tile_i, tile_w = K.TILES["fwd"], K.TILES["grad_input"], K.TILES["grad_weight"]
    coarse = (max(tile_f[0], tile_i[0], tile_w[0]), max(tile_f[1], tile_i[1], tile_w[1]))
    mask = _block_mask(n, k, coarse, empty_rows=(1,), empty_cols=(0, 2))
    x, w, gy = _randn(b, k, dtype=dtype), _randn(n, k, dtype=dtype, seed=1), _randn(b, n, dtype=dtype, seed=2)
    for skip in (True, False):
        K.clear_cache()
        out = (
            K.forward(x, w, mask, None, skip=skip),
            K.grad_input(gy, w, mask, skip=skip),
            K.grad_weight(gy, x, mask, skip=skip),
        )
        if skip:
            skipped = out
    for a, c in zip(skipped, out):
        assert torch.equal(a, c)
    ref = reference.masked_linear(x.double(), w.double(), mask)
    tol = 0.05 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(skipped[0].double(), ref, atol=tol, rtol=0.02)
    assert not skipped[2][~mask].any()  # grad_W exactly zero off the mask


def test_empty_tiles_are_never_read():
    """Inputs that only meet empty mask tiles are not loaded: NaNs there do not leak."""
    n, k, b = 3 * T, 4 * T, T + 3
    fwd_k = K.TILES["fwd"][1]
    gi_n = K.TILES["grad_input"][0]
    mask = _block_mask(n, k, (gi_n, fwd_k), empty_rows=(1,), empty_cols=(2,))
    x, w, gy = _randn(b, k), _randn(n, k, seed=1), _randn(b, n, seed=2)
    x[:, 2 * fwd_k : 3 * fwd_k] = float("nan")  # columns whose mask tiles are all empty
    gy[:, gi_n : 2 * gi_n] = float("nan")  # outputs whose mask rows are all empty
    y = K.forward(x, w, mask, None)
    gx = K.grad_input(gy, w, mask)
    assert torch.isfinite(y).all() and torch.isfinite(gx).all()
    assert torch.isnan(K.forward(x, w, mask, None, skip=False)).any()  # the check can fail
    keep = torch.ones(k, dtype=torch.bool, device=DEVICE)
    keep[2 * fwd_k : 3 * fwd_k] = False
    ref = reference.masked_linear(x[:, keep].double(), w[:, keep].double(), mask[:, keep])
    torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-4)


def test_cache_follows_in_place_mask_edits_and_new_masks():
    n, k, b = 2 * T, 2 * T, 5
    x, w = _randn(b, k), _randn(n, k, seed=1)
    mask = _block_mask(n, k, (T, T), empty_rows=(1,))
    K.clear_cache()
    y1 = K.forward(x, w, mask, None)
    mask[n - 1, 0] = True  # in place: bumps _version, the empty tile is no longer empty
    y2 = K.forward(x, w, mask, None)
    ref = reference.masked_linear(x.double(), w.double(), mask)
    torch.testing.assert_close(y2.double(), ref, atol=1e-4, rtol=1e-4)
    assert not torch.equal(y1[:, n - 1], y2[:, n - 1])
    for seed in range(3):  # fresh masks (possibly at a recycled address) never hit a stale entry
        m = _block_mask(n, k, (T, T), empty_rows=(seed % 2,), seed=seed)
        ref = reference.masked_linear(x.double(), w.double(), m)
        torch.testing.assert_close(K.forward(x, w, m, None).double(), ref, atol=1e-4, rtol=1e-4)


def test_block_pruned_mask_end_to_end():
    n, k, b = 4 * T, 4 * T, 9
    w = _randn(n, k, seed=3)
    mask = block_magnitude_mask(w, 0.75, block=(T, T))
    occ = K.occupancy(mask, T, T)
    assert int(occ.sum()) == 4  # 16 blocks, 12 pruned
    x = _randn(b, k)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = masked_linear(xg, wg, mask, backend="triton")
    y.sum().backward()
    xr, wr = x.clone().double().requires_grad_(), w.clone().double().requires_grad_()
    reference.masked_linear(xr, wr, mask).sum().backward()
    torch.testing.assert_close(xg.grad.double(), xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(wg.grad.double(), wr.grad, atol=1e-4, rtol=1e-4)


def test_torch_compile_fullgraph():
    n, k, b = T + 3, 2 * T - 1, 7
    x, w, bias = _randn(b, k), _randn(n, k, seed=1), _randn(n, seed=2)
    mask = _block_mask(n, k, (T, T), empty_cols=(0,))

    def f(x, w, bias):
        return masked_linear(x, w, mask, bias, backend="triton").square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="inductor" if DEVICE == "cuda" else "aot_eager")
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    x2, w2 = x.clone().requires_grad_(), w.clone().requires_grad_()
    out1, out2 = compiled(x1, w1, bias), f(x2, w2, bias)
    out1.backward()
    out2.backward()
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(w1.grad, w2.grad)
