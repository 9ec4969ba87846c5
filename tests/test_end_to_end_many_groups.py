"""End to end at 120 groups with a Zipf long tail (groups of under 15 samples next to groups of
thousands), through :class:`ceag.train.Trainer` as a user runs it: NFT vs CEAG (defaults: the
groups the report judges, ≥ ``min_count`` training samples, are constrained) vs CEAG with every
group constrained (``constrain_min_count=0``).

What must hold (train split, ψ over groups with ≥ 30 samples, the reporting convention), as
means over four seeds (data, initialisation and order), never one trajectory: the trajectory is
chaotic and torch's float paths differ between CPUs, so one seed's outcome flips between an AMD
EPYC (CEAG 6.05 vs NFT 6.37, seed 0) and an Intel Xeon (11.4 vs 8.3). Measured on AMD EPYC,
seeds 0-5, train max ψ in points:

    NFT                  6.4  14.1  18.7  18.4   9.1  11.2
    CEAG (defaults)      5.9   5.3   8.1   5.8   4.1   3.6
    CEAG (every group)   6.1   6.4   5.0   3.5   6.8   4.9

with accuracy 0.9 point below NFT at worst. The test asserts CEAG's mean ≤ 0.7 × NFT's over
seeds 0-3 (measured 0.44 and 0.36), accuracy within 2 points on every seed, no collapse
although Σλ passes 1 with every group constrained (the paper's objective would then reward a
higher average loss), and λ_g = 0 exactly for every unconstrained group. On this small,
capacity-bound task neither gets near ε: this test guards the many-group mechanics and the
direction of the effect, not the method's reach (docs/results.md has that).
"""

from __future__ import annotations

import pytest
import torch

from ceag.app.data.synthetic import synthetic
from ceag.metrics import disparity
from ceag.models import build_model
from ceag.train import TrainConfig, Trainer

G = 120
EPS = 0.02
MIN_COUNT = 30
SEEDS = (0, 1, 2, 3)
#: CEAG's mean max ψ over SEEDS must be at most this fraction of NFT's.
RATIO = 0.7


def _fit(method: str, data, seed: int, **overrides):
    torch.manual_seed(seed)
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
        seed=seed,
        **overrides,
    )
    trainer = Trainer(cfg, model, data.train)
    trainer.fit()
    stats = trainer.last_eval["train"]  # the final model, evaluated at the end of the last epoch
    return disparity(trainer.dense_stats, stats, EPS, min_count=MIN_COUNT), stats, trainer


@pytest.fixture(scope="module")
def runs():
    """seed -> variant -> (report, stats, trainer)."""
    out = {}
    for seed in SEEDS:
        data = synthetic(
            num_groups=G, num_train=12000, num_test=0, num_features=24, minority_effect=1.5, imbalance=1.4, seed=seed
        )
        counts = torch.bincount(data.train.tensors[2], minlength=G)
        assert int(counts.min()) < 15 and int(counts.max()) > 1000  # tiny groups next to big ones
        out[seed] = {
            "nft": _fit("nft", data, seed),
            "default": _fit("ceag", data, seed),
            "every group": _fit("ceag", data, seed, constrain_min_count=0),
        }
    return out


def _mean_max_psi(runs, variant: str) -> float:
    return sum(runs[s][variant][0].max_psi for s in SEEDS) / len(SEEDS)


@pytest.mark.parametrize("variant", ["default", "every group"])
def test_ceag_at_120_groups_beats_nft_on_average(runs, variant):
    nft = _mean_max_psi(runs, "nft")
    ceag = _mean_max_psi(runs, variant)
    assert nft > 2 * EPS, nft
    per_seed = {s: (runs[s][variant][0].max_psi, runs[s]["nft"][0].max_psi) for s in SEEDS}
    assert ceag <= RATIO * nft, per_seed
    for seed in SEEDS:
        assert runs[seed][variant][1].overall_accuracy >= runs[seed]["nft"][1].overall_accuracy - 0.02, seed


def test_only_reported_groups_are_constrained_by_default(runs):
    for seed in SEEDS:
        trainer = runs[seed]["default"][2]
        lam = trainer.method.multipliers
        small = trainer.dense_stats.count < MIN_COUNT
        assert bool(small.any()) and bool((lam[small] == 0).all()), seed
        assert float(lam[~small].max()) > 0, seed
        every = runs[seed]["every group"][2].method.multipliers
        assert float(every[small].max()) > 0, seed  # constrained, the tiny groups take multipliers
        # Σλ passed 1 (the paper's objective would have flipped sign) and the model did not collapse.
        assert float(every.sum()) > 1, seed
