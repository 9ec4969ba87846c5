"""ceag.prune.GMPSchedule: the cubic gradual-magnitude-pruning schedule."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from ceag.prune import GMPSchedule, prunable_layers, sparsify


def test_cubic_values():
    s = GMPSchedule(0.1, 0.9, start_step=10, end_step=30, frequency=1)
    assert s.sparsity_at(10) == 0.1  # t = 0: exactly s_i
    assert s.sparsity_at(30) == 0.9  # t = T: exactly s_f
    assert s.sparsity_at(20) == pytest.approx(0.9 - 0.8 / 8)  # t = T/2: (1/2)^3
    assert s.sparsity_at(15) == pytest.approx(0.9 - 0.8 * 0.75**3)
    assert s.sparsity_at(25) == pytest.approx(0.9 - 0.8 * 0.25**3)
    assert s.sparsity_at(0) == 0.1 and s.sparsity_at(100) == 0.9  # clipped outside [start, end]
    vals = [s.sparsity_at(i) for i in range(0, 40)]
    assert all(a <= b for a, b in zip(vals, vals[1:])), "non-decreasing"
    diffs = [b - a for a, b in zip(vals[10:31], vals[11:31])]
    assert all(a >= b for a, b in zip(diffs, diffs[1:])), "concave: prunes fastest early"


def test_prune_steps_and_frequency():
    s = GMPSchedule(0.0, 0.9, start_step=2, end_step=12, frequency=4)
    assert s.prune_steps == [2, 6, 10, 12]  # end_step always included
    assert [t for t in range(20) if s.should_prune(t)] == s.prune_steps
    assert GMPSchedule(0.0, 0.9, 0, 15, 1).prune_steps == list(range(16))
    assert GMPSchedule(0.0, 0.9, 0, 12, 3).prune_steps == [0, 3, 6, 9, 12]
    one_shot = GMPSchedule(0.0, 0.8, 5, 5)
    assert one_shot.prune_steps == [5] and one_shot.sparsity_at(4) == 0.0 and one_shot.sparsity_at(5) == 0.8
    assert not s.finished(11) and s.finished(12) and s.finished(13)


def test_step_prunes_model_when_due():
    torch.manual_seed(0)
    model = sparsify(nn.Sequential(nn.Linear(10, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    s = GMPSchedule(0.2, 0.9, start_step=1, end_step=7, frequency=3)
    layers = [m for _, m in prunable_layers(model)]
    expected = 0.0
    for t in range(10):
        assert s.step(model, t, optimizer=opt) == (t in (1, 4, 7))
        if t in (1, 4, 7):
            expected = s.sparsity_at(t)
        for m in layers:
            assert int((~m.mask).sum()) == round(expected * m.mask.numel()), f"step {t}"
            assert (m.weight[~m.mask] == 0).all()
        assert s.last_step == t
    masks = [m.mask.clone() for m in layers]
    s.step(model, 7)  # repeating a step (e.g. after resuming) changes nothing
    assert all(torch.equal(a, m.mask) for a, m in zip(masks, layers))


def test_state_dict_round_trip():
    a = GMPSchedule(0.05, 0.95, 3, 40, 2, scope="global")
    a.last_step = 17
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = GMPSchedule(0.0, 0.5, 0, 1)
    b.load_state_dict(torch.load(buf))
    assert b.state_dict() == a.state_dict() and b.scope == "global" and b.last_step == 17
    assert [b.sparsity_at(t) for t in range(50)] == [a.sparsity_at(t) for t in range(50)]
    assert "final_sparsity=0.95" in repr(b)
    with pytest.raises(KeyError, match="state_dict keys"):
        b.load_state_dict({"initial_sparsity": 0.0})
    with pytest.raises(ValueError, match="final_sparsity"):
        b.load_state_dict({**a.state_dict(), "final_sparsity": 1.5})


GOOD = dict(initial_sparsity=0.0, final_sparsity=0.9, start_step=0, end_step=10, frequency=1)


@pytest.mark.parametrize(
    "override, exc, match",
    [
        ({"initial_sparsity": -0.1}, ValueError, "initial_sparsity must be in"),
        ({"final_sparsity": 1.0}, ValueError, r"final_sparsity must be in \[0, 1\)"),
        ({"final_sparsity": "0.9"}, TypeError, "final_sparsity must be a real number"),
        ({"initial_sparsity": 0.95}, ValueError, "initial_sparsity .* must be <= final_sparsity"),
        ({"start_step": -1}, ValueError, "start_step must be >= 0"),
        ({"start_step": 1.5}, TypeError, "start_step must be an integer"),
        ({"start_step": 11}, ValueError, r"end_step \(10\) must be >= start_step \(11\)"),
        ({"end_step": None}, TypeError, "end_step must be an integer"),
        ({"frequency": 0}, ValueError, "frequency must be >= 1"),
        ({"frequency": True}, TypeError, "frequency must be an integer"),
        ({"scope": "net"}, ValueError, "scope must be 'layer' or 'global'"),
    ],
)
def test_bad_arguments(override, exc, match):
    with pytest.raises(exc, match=match):
        GMPSchedule(**{**GOOD, **override})


def test_bad_step():
    s = GMPSchedule(**GOOD)
    with pytest.raises(ValueError, match="step must be >= 0"):
        s.sparsity_at(-1)
    with pytest.raises(TypeError, match="step must be an integer"):
        s.should_prune(2.0)
