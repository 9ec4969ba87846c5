"""ceag.metrics: GroupStats, streaming evaluation, disparity with confidence intervals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ceag.metrics import (
    STATUS_ABSENT,
    STATUS_UNKNOWN,
    STATUS_VIOLATES,
    STATUS_WITHIN,
    GroupStats,
    dense_reference,
    disparity,
    evaluate,
    wilson_interval,
)


def _stats(count, correct, loss=None):
    count = torch.tensor(count)
    loss = torch.zeros(len(count), dtype=torch.float64) if loss is None else torch.tensor(loss, dtype=torch.float64)
    return GroupStats(count, torch.tensor(correct), loss)


def test_group_stats_accuracy_absent_groups_are_nan():
    s = _stats([4, 0, 6], [3, 0, 3], [2.0, 0.0, 3.0])
    assert s.accuracy[0] == 0.75 and math.isnan(s.accuracy[1]) and s.accuracy[2] == 0.5
    assert math.isnan(s.loss[1]) and s.loss[2] == 0.5
    assert s.overall_accuracy == 0.6 and s.overall_loss == 0.5
    torch.testing.assert_close(s.shares, torch.tensor([0.4, 0.0, 0.6], dtype=torch.float64))
    empty = GroupStats.zeros(3)
    assert math.isnan(empty.overall_accuracy) and empty.accuracy.isnan().all()


def test_group_stats_merge_add_and_state_dict():
    a, b = _stats([1, 2], [1, 0], [0.5, 1.0]), _stats([3, 0], [2, 0], [1.5, 0.0])
    m = a + b
    assert m.count.tolist() == [4, 2] and m.correct.tolist() == [3, 0] and m.loss_sum.tolist() == [2.0, 1.0]
    assert a.count.tolist() == [1, 2]  # merge does not mutate
    r = GroupStats.from_state_dict(m.state_dict())
    assert torch.equal(r.count, m.count) and torch.equal(r.loss_sum, m.loss_sum)
    with pytest.raises(ValueError, match="groups"):
        a.merge(GroupStats.zeros(3))
    with pytest.raises(ValueError, match="correct"):
        _stats([1], [2])


def test_evaluate_streams_the_fused_op_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    x, y, g = torch.randn(50, 5), torch.randint(0, 3, (50,)), torch.randint(0, 4, (50,))
    g[g == 2] = 1  # group 2 absent
    loader = [(x[:20], y[:20], g[:20]), (x[20:], y[20:], g[20:])]
    stats = evaluate(model, loader, 4)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        logits = model(x)
    ce = F.cross_entropy(logits, y, reduction="none").double()
    correct = (logits.argmax(1) == y).long()
    assert stats.count.tolist() == torch.bincount(g, minlength=4).tolist()
    assert stats.correct.tolist() == torch.bincount(g, correct, minlength=4).long().tolist()
    torch.testing.assert_close(stats.loss_sum, torch.zeros(4, dtype=torch.float64).index_add(0, g, ce))
    assert stats.count[2] == 0 and math.isnan(stats.accuracy[2])
    ref = dense_reference(model, loader, 4)
    assert torch.equal(ref.correct, stats.correct)
    with pytest.raises(ValueError, match="no samples"):
        dense_reference(model, [], 4)


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(torch.tensor([8, 0]), torch.tensor([10, 0]))
    assert lo[0].item() == pytest.approx(0.49016, abs=1e-4)
    assert hi[0].item() == pytest.approx(0.94331, abs=1e-4)
    assert math.isnan(lo[1]) and math.isnan(hi[1])
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(torch.tensor([1]), torch.tensor([2]), confidence=1.0)


def test_disparity_hand_computed_with_absent_and_small_groups():
    dense = _stats([100, 50, 0, 40, 2], [90, 45, 0, 36, 2])
    sparse = _stats([100, 50, 0, 40, 2], [85, 35, 0, 36, 1])
    r = disparity(dense, sparse, tolerance=0.05, min_count=3)
    overall_d, overall_s = 173 / 192, 157 / 192
    gap = overall_d - overall_s
    assert r.overall_gap == pytest.approx(gap)
    psi = [0.05 - gap, 0.2 - gap, math.nan, 0.0 - gap, math.nan]
    for got, want in zip(r.psi.tolist(), psi):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want)
    assert r.included.tolist() == [True, True, False, True, False]
    assert r.max_psi == pytest.approx(0.2 - gap) and r.min_psi == pytest.approx(-gap)
    assert r.psi_pw == pytest.approx(0.2)
    assert r.frac_within_tolerance == pytest.approx(2 / 3)  # ψ_0 ≈ -0.033, ψ_3 ≈ -0.083
    assert r.status[2] == STATUS_ABSENT and r.status[4] == STATUS_ABSENT
    lo, hi = r.psi_ci
    assert all(lo[i] <= r.psi[i] <= hi[i] for i in (0, 1, 3))


def test_disparity_status_within_violates_and_too_small():
    big = 100_000
    dense = _stats([big, big, big, 20], [int(0.9 * big), int(0.9 * big), int(0.9 * big), 18])
    sparse = _stats([big, big, big, 20], [int(0.9 * big), int(0.7 * big), int(0.9 * big), 15])
    r = disparity(dense, sparse, tolerance=0.02, min_count=1)
    assert r.status[0] == STATUS_WITHIN
    assert r.status[1] == STATUS_VIOLATES
    assert r.status[3] == STATUS_UNKNOWN
    s = r.summary()
    assert s["num_within"] == 2 and s["num_violates"] == 1 and s["num_too_small"] == 1
    assert s["max_psi"] == pytest.approx(r.max_psi)


def test_disparity_dataframe_and_summary():
    r = disparity(_stats([10, 0, 30], [8, 0, 20]), _stats([10, 0, 30], [6, 0, 21]), tolerance=0.1, min_count=1)
    df = r.to_dataframe(group_names=["a", "b", "c"])
    assert list(df.index) == ["a", "b", "c"] and df.index.name == "group"
    for col in (
        "count",
        "dense_accuracy",
        "sparse_accuracy",
        "accuracy_gap",
        "psi",
        "psi_lower",
        "psi_upper",
        "status",
        "sparse_accuracy_lower",
        "sparse_accuracy_upper",
        "included",
    ):
        assert col in df.columns
    assert df.loc["b", "status"] == STATUS_ABSENT and math.isnan(df.loc["b", "psi"])
    assert set(r.summary()) >= {"max_psi", "psi_pw", "frac_within_tolerance", "accuracy_gap", "num_included"}
    with pytest.raises(ValueError, match="group_names"):
        r.to_dataframe(group_names=["a"])


def test_disparity_bad_arguments():
    a = _stats([1, 2], [1, 1])
    with pytest.raises(ValueError, match="tolerance"):
        disparity(a, a, tolerance=-0.1)
    with pytest.raises(ValueError, match="min_count"):
        disparity(a, a, min_count=0)
    with pytest.raises(ValueError, match="groups"):
        disparity(a, GroupStats.zeros(3))
    with pytest.raises(TypeError, match="GroupStats"):
        disparity(a, None)


def test_small_groups_are_left_out_by_default_and_counted():
    dense = _stats([10, 29, 30, 500, 0], [9, 20, 27, 450, 0])
    sparse = _stats([10, 29, 30, 500, 0], [1, 10, 25, 440, 0])
    r = disparity(dense, sparse, tolerance=0.01)
    assert r.min_count == 30 and r.included.tolist() == [False, False, True, True, False]
    assert r.num_excluded == 2 and r.summary()["num_excluded"] == 2
    assert (
        r.exclusion_note() == "2 of 4 groups left out: fewer than 30 samples, where one sample moves ψ_g by more than 3.3 points"
    )
    assert disparity(dense, sparse, min_count=1).exclusion_note() == ""
