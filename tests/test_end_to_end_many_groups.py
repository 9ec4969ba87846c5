"""End to end at 120 groups with a Zipf long tail (groups of under 15 samples next to groups of
thousands), through :class:`ceag.train.Trainer` as a user runs it: NFT vs CEAG (defaults)
vs CEAG with the groups too small to estimate left unconstrained.

What must hold (train split, ψ over groups with ≥ 30 samples, the reporting convention):
CEAG (defaults, η_λ = 0.4/G) ends with a lower worst excess accuracy gap than NFT and at
most 2 points of accuracy below it: no collapse, although Σλ grows past 1 with this many
constraints (the paper's objective would then reward a higher average loss). On this small,
capacity-bound task neither gets near ε (CEAG 5.9 vs NFT 6.4 points, measured): this test
guards the many-group mechanics, not the method's reach (docs/results.md has that). An
unconstrained group's multiplier stays exactly 0.
"""

from __future__ import annotations

import torch

from ceag.app.data.synthetic import synthetic
from ceag.metrics import disparity
from ceag.models import build_model
from ceag.train import TrainConfig, Trainer

G = 120
EPS = 0.02
MIN_COUNT = 30


def _fit(method: str, data, **overrides):
    torch.manual_seed(0)
    model = build_model(data.input_shape, data.num_classes, "mlp", (64, 64))
    cfg = TrainConfig(
        num_groups=G,
        method=method,
        tolerance=EPS,
        dual_lr=0.4 / G,
        buffer_size=20,
        dense_epochs=8,
        dense_lr=0.05,
        final_sparsity=0.9,
        pruning_epochs=2,
        mitigation_epochs=14,
        batch_size=256,
        eval_batch_size=4096,
        eval_test=False,
        min_count=MIN_COUNT,
        progress=False,
        **overrides,
    )
    trainer = Trainer(cfg, model, data.train)
    trainer.fit()
    stats = trainer._evaluate(data.train)
    return disparity(trainer.dense_stats, stats, EPS, min_count=MIN_COUNT), stats, trainer


def test_ceag_at_120_groups_with_tiny_ones():
    data = synthetic(num_groups=G, num_train=12000, num_test=0, num_features=24, minority_effect=1.5, imbalance=1.4)
    counts = torch.bincount(data.train.tensors[2], minlength=G)
    assert int(counts.min()) < 15 and int(counts.max()) > 1000  # tiny groups next to big ones

    nft, nft_stats, _ = _fit("nft", data)
    ceag, ceag_stats, trainer = _fit("ceag", data)
    assert nft.max_psi > 2 * EPS, nft.summary()
    assert ceag.max_psi < nft.max_psi, (ceag.summary(), nft.summary())
    assert ceag_stats.overall_accuracy >= nft_stats.overall_accuracy - 0.02
    assert float(trainer.method.multipliers.sum()) > 1  # the paper's objective would have flipped sign

    capped, _, trainer = _fit("ceag", data, constrain_min_count=MIN_COUNT)
    lam = trainer.method.multipliers
    small = trainer.dense_stats.count < MIN_COUNT
    assert bool(small.any()) and bool((lam[small] == 0).all())
    assert float(lam[~small].max()) > 0
    assert capped.max_psi < nft.max_psi, (capped.summary(), nft.summary())
