"""The paired interval on ψ_g: coverage and width by simulation, verdicts on a constructed table,
and the per-sample bookkeeping (evaluate_samples, paired_counts) it rests on."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ceag.metrics import (
    STATUS_UNKNOWN,
    STATUS_VIOLATES,
    STATUS_WITHIN,
    GroupStats,
    disparity,
    evaluate,
    evaluate_samples,
    paired_counts,
    paired_psi_interval,
)

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _stats(correct: torch.Tensor, group: torch.Tensor, num_groups: int) -> GroupStats:
    count = torch.bincount(group, minlength=num_groups)
    return GroupStats(count, torch.bincount(group[correct], minlength=num_groups), torch.zeros(num_groups, dtype=torch.float64))


def _constructed(groups: list[tuple[int, int, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (dense correct, sparse correct, group) for groups of (n, dense right, lost, gained)."""
    dense, sparse, group = [], [], []
    for g, (n, right, lost, gained) in enumerate(groups):
        d = torch.zeros(n, dtype=torch.bool)
        d[:right] = True
        s = d.clone()
        s[:lost] = False
        s[right : right + gained] = True
        dense.append(d)
        sparse.append(s)
        group.append(torch.full((n,), g))
    return torch.cat(dense), torch.cat(sparse), torch.cat(group)


def _normal_half_width(count, p_lost, p_gained, confidence=0.95) -> torch.Tensor:
    """The paired normal approximation at the true parameters, Bonferroni over the groups."""
    n = torch.as_tensor(count, dtype=torch.float64)
    pa, pb = torch.as_tensor(p_lost, dtype=torch.float64), torch.as_tensor(p_gained, dtype=torch.float64)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / (2 * len(n)))
    var = pa + pb - (pa - pb) ** 2
    share = n / n.sum()
    return z * torch.sqrt((1 - share) ** 2 * var / n + ((n * var).sum() - n * var) / n.sum() ** 2)


def _simulate(count, p_lost, p_gained, reps, seed=0, confidence=0.95):
    """Draw ``reps`` tables of paired outcomes; return (simultaneous coverage, mean half-width [G])."""
    g = torch.Generator().manual_seed(seed)
    n = torch.as_tensor(count, dtype=torch.float64)
    pa, pb = torch.as_tensor(p_lost, dtype=torch.float64), torch.as_tensor(p_gained, dtype=torch.float64)
    delta = pa - pb
    truth = delta - (n / n.sum() * delta).sum()
    covered, widths = 0, torch.zeros(len(count), dtype=torch.float64)
    included = torch.ones(len(count), dtype=torch.bool)
    for _ in range(reps):
        lost = torch.binomial(n, pa, generator=g)
        gained = torch.binomial(n - lost, (pb / (1 - pa)).clamp(max=1), generator=g)  # multinomial, drawn in two steps
        lo, hi, _ = paired_psi_interval(n, lost, gained, included, confidence)
        covered += bool(((lo <= truth) & (truth <= hi)).all())
        widths += (hi - lo) / 2
    return covered / reps, widths / reps


# ---------------------------------------------------------------------------------------
# Coverage and width (Monte Carlo)
# ---------------------------------------------------------------------------------------

REPS = 1500
# The simultaneous coverage must reach 95% within three Monte Carlo standard errors.
FLOOR = 0.95 - 3 * math.sqrt(0.95 * 0.05 / REPS)

SCENARIOS = {
    # large groups, 3% discordant both ways, no harm; one group of 60
    "no harm": ([3000] * 4 + [60], [0.015] * 5, [0.015] * 5),
    # groups of 30 with a one-sided loss: the adjustment must hold the tails
    "small, one-sided": ([30] * 5, [0.3] * 5, [0.0] * 5),
    # rare discordance in small groups (an unadjusted Wald would have zero width)
    "small, rare": ([30, 30, 40, 40, 5000], [0.02, 0.0, 0.01, 0.05, 0.02], [0.0, 0.02, 0.0, 0.0, 0.02]),
    # ψ near ±ε, mixed sizes
    "near ε": ([150, 400, 3000, 3000, 60], [0.06, 0.035, 0.02, 0.01, 0.05], [0.04, 0.01, 0.01, 0.01, 0.0]),
    # many groups: z at 1 − α / 80
    "40 groups": ([50] * 39 + [20000], [0.1] * 39 + [0.03], [0.02] * 39 + [0.01]),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_simultaneous_coverage_reaches_the_nominal_level(name):
    count, pa, pb = SCENARIOS[name]
    coverage, _ = _simulate(count, pa, pb, REPS if len(count) < 20 else REPS // 3)
    floor = FLOOR if len(count) < 20 else 0.95 - 3 * math.sqrt(0.95 * 0.05 / (REPS // 3))
    assert coverage >= floor, f"{name}: simultaneous coverage {coverage:.3f} < {floor:.3f}"


@pytest.mark.parametrize("name", ["no harm", "near ε", "40 groups"])
def test_width_is_near_the_paired_normal_approximation(name):
    """Where discordant pairs are not rare, the adjusted interval is the normal one, give or take."""
    count, pa, pb = SCENARIOS[name]
    _, width = _simulate(count, pa, pb, 200)
    ratio = width / _normal_half_width(count, pa, pb)
    assert bool(((ratio > 0.9) & (ratio < 2.0)).all()), ratio.tolist()


# ---------------------------------------------------------------------------------------
# Verdicts on a constructed table (issue 23's acceptance table)
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def constructed():
    # Four groups of 3,000 at 85% dense accuracy with 3% discordant pairs and no harm, one of
    # 3,000 that loses 7.5 points, one of 60.
    groups = [(3000, 2550, 45, 45)] * 4 + [(3000, 2550, 270, 45), (60, 51, 1, 1)]
    dense, sparse, group = _constructed(groups)
    lost, gained = paired_counts(dense, sparse, group, len(groups))
    d, s = _stats(dense, group, len(groups)), _stats(sparse, group, len(groups))
    return groups, d, s, lost, gained


def test_constructed_table_verdicts(constructed):
    groups, d, s, lost, gained = constructed
    rep = disparity(d, s, 0.015, lost=lost, gained=gained)
    assert rep.interval == "paired"
    assert rep.status == [STATUS_WITHIN] * 4 + [STATUS_VIOLATES, STATUS_UNKNOWN]
    assert rep.summary()["num_measurable"] == 5
    assert rep.summary()["max_psi_measurable"] == pytest.approx(0.075 - rep.overall_gap)
    # Each half-width within 0.5–3x the paired normal approximation at the observed rates.
    n = torch.tensor([g[0] for g in groups], dtype=torch.float64)
    ratio = rep.half_width / _normal_half_width(n, lost / n, gained / n)
    assert bool(((ratio >= 0.5) & (ratio <= 3.0)).all()), ratio.tolist()
    # The group of 60 says how many samples would certify it at its discordance.
    assert 200 < float(rep.samples_to_certify[5]) < 5000
    assert math.isnan(float(rep.samples_to_certify[4]))  # its estimate is above ε


def test_unpaired_interval_cannot_certify_the_constructed_table(constructed):
    """Without the pairing the same data certify nothing: the old interval is ~6x wider."""
    _, d, s, lost, gained = constructed
    old = disparity(d, s, 0.015)
    new = disparity(d, s, 0.015, lost=lost, gained=gained)
    assert old.interval == "unpaired" and set(old.status) == {STATUS_UNKNOWN}
    assert float(old.half_width[0]) > 4 * float(new.half_width[0])


# ---------------------------------------------------------------------------------------
# Bookkeeping and bad input
# ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 200),
    num_groups=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_paired_counts_match_a_loop(n, num_groups, seed):
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(n, generator=g) < 0.7
    s = torch.rand(n, generator=g) < 0.6
    group = torch.randint(0, num_groups, (n,), generator=g)
    lost, gained = paired_counts(d, s, group, num_groups)
    for k in range(num_groups):
        idx = [i for i in range(n) if int(group[i]) == k]
        assert int(lost[k]) == sum(bool(d[i]) and not bool(s[i]) for i in idx)
        assert int(gained[k]) == sum(not bool(d[i]) and bool(s[i]) for i in idx)
    # And they are consistent with the two models' statistics.
    disparity(_stats(d, group, num_groups), _stats(s, group, num_groups), 0.01, min_count=1, lost=lost, gained=gained)


def test_evaluate_samples_agrees_with_evaluate():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y, grp = torch.randn(70, 5), torch.randint(0, 3, (70,)), torch.randint(0, 4, (70,))
    batches = [(x[i : i + 16], y[i : i + 16], grp[i : i + 16]) for i in range(0, 70, 16)]
    out = evaluate_samples(model, batches, 4)
    ref = evaluate(model, batches, 4)
    assert torch.equal(out.stats.count, ref.count) and torch.equal(out.stats.correct, ref.correct)
    assert torch.equal(out.correct, model(x).argmax(1) == y) and torch.equal(out.group, grp)


def test_paired_counts_refuse_misaligned_samples():
    with pytest.raises(ValueError, match="same samples"):
        paired_counts(torch.ones(5, dtype=torch.bool), torch.ones(4, dtype=torch.bool), torch.zeros(5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="group ids"):
        paired_counts(torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool), torch.tensor([0, 3]), 2)


def test_disparity_refuses_counts_that_do_not_match_the_statistics(constructed):
    _, d, s, lost, gained = constructed
    with pytest.raises(ValueError, match="both lost and gained"):
        disparity(d, s, 0.01, lost=lost)
    with pytest.raises(ValueError, match="do not match"):
        disparity(d, s, 0.01, lost=lost + 1, gained=gained)
    with pytest.raises(ValueError, match="shape"):
        disparity(d, s, 0.01, lost=lost[:2], gained=gained[:2])
    with pytest.raises(ValueError, match=">= 0"):
        disparity(d, s, 0.01, lost=-lost, gained=gained)
    other = GroupStats(d.count + 1, d.correct, d.loss_sum)
    with pytest.raises(ValueError, match="same samples"):
        disparity(d, other, 0.01, lost=lost, gained=gained)


def test_num_absent_counts_only_groups_without_samples():
    dense = GroupStats(torch.tensor([100, 10, 0]), torch.tensor([90, 9, 0]), torch.zeros(3, dtype=torch.float64))
    s = disparity(dense, dense.clone(), 0.01, min_count=30).summary()
    assert s["num_absent"] == 1 and s["num_excluded"] == 1  # the group of 10 has data: left out, not absent
