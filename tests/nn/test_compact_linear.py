"""CompactLinear: the compact-storage masked linear layer against the dense-parameter one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import TensorDataset

from ceag.nn import CompactLinear, MaskedLinear
from ceag.prune import apply_masks_, magnitude_prune, sparsify, sparsity_report
from ceag.train import TrainConfig, Trainer


def _mlp(seed: int = 0, width: int = 48) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3))


def _data(n: int = 256):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 20, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()


def test_storage_compact_builds_a_compact_layer_that_computes_the_same():
    mask = torch.rand(7, 11, generator=torch.Generator().manual_seed(0)) < 0.3
    layer = MaskedLinear(11, 7, storage="compact", mask=mask)
    assert isinstance(layer, CompactLinear) and layer.values.shape == (int(mask.sum()),)
    dense = layer.to_dense()
    ref = MaskedLinear.from_linear(copy.deepcopy(dense), mask=mask)
    x = torch.randn(5, 11)
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-6, atol=1e-6)  # zeros where pruned
    with pytest.raises(ValueError, match="storage must be one of"):
        MaskedLinear(11, 7, storage="sparse")


def test_dense_round_trips():
    linear = nn.Linear(9, 6)
    mask = torch.rand(6, 9, generator=torch.Generator().manual_seed(2)) < 0.5
    compact = CompactLinear.from_dense(linear, mask)
    back = compact.to_dense()
    assert torch.equal(back.weight, linear.weight.detach() * mask) and torch.equal(back.bias, linear.bias)
    assert torch.equal(compact.mask, mask) and compact.num_kept == int(mask.sum())
    masked = compact.to_masked()
    assert isinstance(masked, MaskedLinear) and masked.weight is compact.values  # the same Parameter
    assert torch.equal(masked.weight, back.weight) and torch.equal(masked.mask, mask)
    again = masked.to_compact()
    assert again.values is masked.weight and torch.equal(again.to_dense().weight, back.weight)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_pruning_remaps_optimizer_state_exactly(opt_name):
    """Training with pruning steps in between: compact and dense-parameter storage take the
    same steps (a kept weight keeps its momentum / moments, a pruned one loses them)."""
    x, y = _data()
    models = {"dense": sparsify(_mlp()), "compact": sparsify(_mlp(), storage="compact")}
    make = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
        "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    }[opt_name]
    opts = {k: make(m.parameters()) for k, m in models.items()}
    for step in range(12):
        if step in (2, 5, 8):
            for k, m in models.items():
                magnitude_prune(m, {2: 0.5, 5: 0.8, 8: 0.95}[step], optimizer=opts[k])
        for k, m in models.items():
            opts[k].zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opts[k].step()
            apply_masks_(m)
    d, c = models["dense"], models["compact"]
    for i in (0, 2):
        torch.testing.assert_close(c[i].weight, d[i].weight.detach(), rtol=1e-5, atol=1e-6)
        state = opts["compact"].state[c[i].values]
        key = "momentum_buffer" if opt_name == "sgd" else "exp_avg"
        assert state[key].shape == (c[i].num_kept,)  # nnz-sized optimizer state
        dense_state = opts["dense"].state[d[i].weight][key]
        torch.testing.assert_close(c[i].layout.to_dense(state[key]), dense_state * d[i].mask, rtol=1e-5, atol=1e-6)
    assert sparsity_report(c).masked_overall.sparsity == pytest.approx(0.95, abs=1e-3)


class _Shapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numels: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numels.append(t.numel())
        return out


def test_a_training_step_creates_no_dense_weight_sized_tensor():
    torch.manual_seed(0)
    layer = CompactLinear(512, 384, mask=torch.rand(384, 512) < 0.01)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(32, 512)
    for _ in range(2):  # the second step has momentum state
        with _Shapes() as seen:
            opt.zero_grad()
            layer(x).square().mean().backward()
            opt.step()
        assert max(seen.numels) < 384 * 512 // 10, max(seen.numels)
    # The check can fail: the dense-parameter layer's step does create [N, K] tensors.
    masked = layer.to_masked()
    opt = torch.optim.SGD(masked.parameters(), lr=0.1, momentum=0.9)
    with _Shapes() as seen:
        opt.zero_grad()
        masked(x).square().mean().backward()
        opt.step()
    assert max(seen.numels) >= 384 * 512


def test_state_dict_resizes_and_resumes():
    src = CompactLinear(30, 20, mask=torch.rand(20, 30, generator=torch.Generator().manual_seed(3)) < 0.2)
    state = src.state_dict()
    assert set(state) == {"values", "bias", "row_ptr", "col_idx"}  # the derived CSC is not saved
    dst = CompactLinear(30, 20)  # full: another nnz
    dst.load_state_dict(state)
    x = torch.randn(4, 30)
    assert torch.equal(dst(x), src(x)) and torch.equal(dst.mask, src.mask)
    bad = dict(state, col_idx=state["col_idx"].flip(0))
    with pytest.raises(ValueError, match="ascending"):
        CompactLinear(30, 20).load_state_dict(bad)


def test_compile_fullgraph_over_compact_layers():
    model = sparsify(_mlp(), storage="compact")
    magnitude_prune(model, 0.9)
    x, y = _data(64)
    eager = nn.functional.cross_entropy(model(x), y)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = nn.functional.cross_entropy(compiled(x), y)
    torch.testing.assert_close(out, eager)
    (g,) = torch.autograd.grad(out, model[0].values)
    (g_eager,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), model[0].values)
    torch.testing.assert_close(g, g_eager)


def _trainer(tmp_path, storage, name):
    x, y = _data(600)
    data = TensorDataset(x, y, torch.arange(600) % 3)
    cfg = TrainConfig(
        num_groups=3,
        pruning_epochs=3,
        mitigation_epochs=2,
        batch_size=50,
        min_count=1,
        final_sparsity=0.95,
        progress=False,
        storage=storage,
        output_dir=str(tmp_path / name),
    )
    return Trainer(cfg, _mlp(), data, data)


def test_trainer_storages_agree_and_auto_resumes_exactly(tmp_path):
    rows = {}
    for storage in ("dense", "compact", "auto"):
        t = _trainer(tmp_path, storage, storage)
        t.fit()
        rows[storage] = t.history[-1]
        kind = MaskedLinear if storage == "dense" else CompactLinear
        assert isinstance(t.model[2], kind)
    for k in ("train_accuracy", "train_max_psi", "test_accuracy", "sparsity"):
        assert rows["compact"][k] == pytest.approx(rows["dense"][k], abs=1e-6), k
        assert rows["auto"][k] == pytest.approx(rows["dense"][k], abs=1e-6), k
    stopped = _trainer(tmp_path, "auto", "resumed")
    stopped.fit(stop_after_epoch=3)  # pruned to 95%: compact layers in the checkpoint
    resumed = _trainer(tmp_path, "auto", "resumed")
    resumed.fit(resume=True)
    assert resumed.history[-1] == rows["auto"]


def test_storage_is_validated():
    with pytest.raises(ValueError, match="TrainConfig.storage must be one of dense, compact, auto"):
        TrainConfig(num_groups=2, storage="csr")
    with pytest.raises(ValueError, match="storage must be one of"):
        sparsify(_mlp(), storage="csr")
