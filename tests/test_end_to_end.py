"""End to end on synthetic data where pruning hurts minority groups: NFT vs CEAG.

Four groups (70/10/10/10%), each with its own linear labelling rule, an MLP of MaskedLinear
layers trained dense, one-shot layer-wise magnitude pruning of the two hidden layers to 80%,
then fine-tuning. NFT leaves a minority group's excess accuracy gap ψ_g well above ε on the
train set; CEAG (replay buffers) brings every group to ε at about the same accuracy.

The outcome is asserted on every one of three seeds (data, initialisation and order), with
margins from measurements: on AMD EPYC, seeds 0-5, NFT's max ψ was 4.3-8.8 points, CEAG's
0.1-1.1 (margin 0) and 0.3-0.7 (margin 1), accuracy within 1.2 points of NFT. One
trajectory's outcome is no evidence on another CPU, whose float paths differ.
(Pruning uses ``ceag.prune.magnitude_prune`` (layer scope); a local fallback with the same
rule keeps this test independent of that module's presence.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ceag.methods import CEAG, NFT
from ceag.metrics import disparity, evaluate
from ceag.nn import MaskedLinear

G = 4
EPS = 0.02


def _data(seed: int = 0, n: int = 4000, d: int = 16):
    gen = torch.Generator().manual_seed(seed)
    group = torch.multinomial(torch.tensor([0.7, 0.1, 0.1, 0.1]), n, replacement=True, generator=gen)
    x = torch.randn(n, d, generator=gen)
    rules = torch.randn(G, d, generator=torch.Generator().manual_seed(123))
    y = ((x * rules[group]).sum(1) > 0).long()
    inputs = torch.cat([x, nn.functional.one_hot(group, G).float()], 1)
    return inputs, y, group


def _batches(x, y, g, gen, bs=128):
    perm = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), bs):
        j = perm[i : i + bs]
        yield x[j], y[j], g[j]


def _prune_layerwise(model: nn.Module, sparsity: float) -> None:
    try:
        from ceag.prune import magnitude_prune
    except ImportError:
        magnitude_prune = None
    if magnitude_prune is not None:
        magnitude_prune(model, sparsity, scope="layer")
        return
    for m in model.modules():
        if isinstance(m, MaskedLinear):
            w = m.weight.detach().abs()
            threshold = w.flatten().kthvalue(int(round(sparsity * w.numel()))).values
            m.set_mask(w > threshold)


def _run(method_name: str, seed: int = 0, **ceag_kwargs):
    torch.manual_seed(seed)
    x, y, g = _data(seed)
    model = nn.Sequential(MaskedLinear(x.shape[1], 64), nn.ReLU(), MaskedLinear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(30):
        for xb, yb, _gb in _batches(x, y, g, gen):
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    train = [(x, y, g)]
    dense = evaluate(model, train, G)
    _prune_layerwise(model, 0.8)

    if method_name == "nft":
        method = NFT(G)
    else:
        method = CEAG(G, dense, tolerance=EPS, dual_lr=0.05, buffer_size=20, multiplier_sum_warning=None, **ceag_kwargs)
    epochs = 20
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    for epoch in range(epochs):
        if epoch == int(0.75 * epochs):
            for pg in opt.param_groups:
                pg["lr"] *= 0.1
        for xb, yb, gb in _batches(x, y, g, gen):
            out = method.step(model(xb), yb, gb)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
    return disparity(dense, evaluate(model, train, G), EPS), method


SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def runs():
    """seed -> {"nft", "margin0", "default"} -> (report, method): every run once per module."""
    out = {}
    for seed in SEEDS:
        out[seed] = {
            "nft": _run("nft", seed),
            "margin0": _run("ceag", seed, margin=0.0),
            "default": _run("ceag", seed),
        }
    return out


@pytest.mark.parametrize("variant", ["margin0", "default"])
def test_ceag_keeps_minority_groups_within_tolerance_nft_does_not(runs, variant):
    """On every seed: NFT leaves a minority group above 2ε on average, CEAG keeps every group
    within ε (+ 0.5 point with the paper's target ε, margin 0) at NFT's accuracy (± 3 points)."""
    nft_mean = sum(runs[s]["nft"][0].max_psi for s in SEEDS) / len(SEEDS)
    assert nft_mean > 2 * EPS, [runs[s]["nft"][0].summary() for s in SEEDS]
    bound = EPS + 0.005 if variant == "margin0" else EPS
    for seed in SEEDS:
        nft, (ceag, method) = runs[seed]["nft"][0], runs[seed][variant]
        assert ceag.max_psi <= bound, (seed, ceag.summary())
        assert abs(ceag.overall_sparse_accuracy - nft.overall_sparse_accuracy) <= 0.03, seed
        assert ceag.psi_pw < nft.psi_pw, seed
        # The multipliers did the work: a minority carries them, not the majority (whose λ
        # is the smallest when the target is 0; with the target at ε some minority may need none).
        lam = method.multipliers
        assert float(lam[1:].max()) > 5 * float(lam[0]), (seed, lam)
        if variant == "default":
            assert float(lam[1:].min()) > float(lam[0]), (seed, lam)


def test_default_targets_no_excess_loss(runs):
    """The default (margin 1) aims at ψ̂_g ≤ 0, the paper's (margin 0) at ε."""
    assert runs[SEEDS[0]]["default"][1].margin == 1.0
    assert runs[SEEDS[0]]["margin0"][1].margin == 0.0
