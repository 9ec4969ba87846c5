"""The dual step on held-out samples (``Trainer(val_set=...)``, ``CEAG(held_out=True)``):
the buffers are filled from the held-out batch only, against the dense model's held-out
accuracies; the run resumes bit-identically; methods without buffers refuse a val_set."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ceag.methods import CEAG
from ceag.metrics import GroupStats
from ceag.nn import MaskedLinear
from ceag.train import TrainConfig, Trainer

G = 4


def _data(seed: int, n: int):
    gen = torch.Generator().manual_seed(seed)
    group = torch.multinomial(torch.tensor([0.7, 0.1, 0.1, 0.1]), n, replacement=True, generator=gen)
    x = torch.randn(n, 16, generator=gen)
    rules = torch.randn(G, 16, generator=torch.Generator().manual_seed(123))
    y = ((x * rules[group]).sum(1) > 0).long()
    return TensorDataset(torch.cat([x, nn.functional.one_hot(group, G).float()], 1), y, group)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(MaskedLinear(20, 32), nn.ReLU(), MaskedLinear(32, 32), nn.ReLU(), nn.Linear(32, 2))


def _config(tmp=None, **kw) -> TrainConfig:
    base = dict(
        num_groups=G,
        method="ceag",
        tolerance=0.02,
        dual_lr=0.05,
        buffer_size=10,
        dense_epochs=1,
        dense_lr=0.05,
        final_sparsity=0.8,
        pruning_epochs=1,
        mitigation_epochs=3,
        batch_size=100,
        eval_batch_size=600,
        progress=False,
        output_dir=None if tmp is None else str(tmp),
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def splits():
    return _data(0, 1200), _data(1, 300), _data(2, 400)  # train, val, test


def _stats(count, correct):
    return GroupStats(
        count=torch.tensor(count), correct=torch.tensor(correct), loss_sum=torch.zeros(len(count), dtype=torch.float64)
    )


def test_held_out_buffers_fill_from_observe_only():
    dense = _stats([10, 10], [9, 9])
    method = CEAG(2, dense, buffer_size=4, dual_lr=0.1, held_out=True)
    logits = torch.randn(6, 2)
    target, group = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 0, 0, 1, 1, 1])
    method.step(logits, target, group)
    assert int(method.fill.sum()) == 0  # the training batch never enters the buffers
    method.observe(logits, target, group)
    assert method.fill.tolist() == [3, 3]
    correct = (logits.argmax(1) == target).tolist()
    assert method.buffer[0, :3].tolist() == correct[:3] and method.buffer[1, :3].tolist() == correct[3:]
    with pytest.raises(RuntimeError, match="held_out=True"):
        CEAG(2, dense, buffer_size=4).observe(logits, target, group)
    with pytest.raises(ValueError, match="held_out=True needs replay buffers"):
        CEAG(2, dense, buffer_size=None, held_out=True)


def test_trainer_measures_the_dual_on_the_val_set(splits):
    train, val, test = splits
    t = Trainer(_config(), _model(), train, test, val_set=val)
    t.fit()
    assert t.method.held_out
    # The method's dense reference is the dense model's accuracy on the held-out samples.
    assert torch.equal(t.method.dense.count, torch.bincount(val.tensors[2], minlength=G))
    assert torch.equal(t.dense_val_stats.count, t.method.dense.count)
    # Filled k entries per group: from val batches (train alone has other counts, same either way),
    # and ψ on val is in the history.
    assert bool((t.method.fill == 10).all())
    assert all(k in t.history[-1] for k in ("val_accuracy", "val_max_psi"))
    assert float(t.method.multipliers.sum()) > 0


def test_held_out_run_resumes_bit_identically(splits, tmp_path):
    train, val, test = splits
    full = Trainer(_config(tmp_path / "full"), _model(), train, test, val_set=val)
    full.fit()
    cfg = _config(tmp_path / "cut", checkpoint_every_steps=5)
    Trainer(cfg, _model(), train, test, val_set=val).fit(stop_at_step=37)  # mid mitigation epoch
    torch.manual_seed(999)
    again = Trainer(cfg, _model(seed=3), train, test, val_set=val)
    again.fit(resume=True)
    assert torch.equal(full.method.multipliers, again.method.multipliers)
    assert torch.equal(full.method.buffer, again.method.buffer)
    for a, b in zip(full.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="made with a val_set"):
        Trainer(cfg, _model(), train, test).fit(resume=True)


@pytest.mark.parametrize("method", ["ceag_batch", "el"])
def test_methods_without_buffers_refuse_a_val_set(splits, method):
    train, val, _ = splits
    with pytest.raises(ValueError, match="val_set: method"):
        Trainer(_config(method=method, buffer_size=None if method == "ceag_batch" else 10), _model(), train, val_set=val)


def test_nft_trains_the_same_with_or_without_a_val_set(splits):
    train, val, _ = splits
    a = Trainer(_config(method="nft", eval_test=False), _model(), train)
    b = Trainer(_config(method="nft", eval_test=False), _model(), train, val_set=val)
    a.fit()
    b.fit()
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)
    assert "val_max_psi" in b.history[-1]
