"""ceag.train: resume equals an uninterrupted run, atomic and checksummed checkpoints,
history files, config validation, and NFT vs CEAG through the Trainer (synthetic data of
tests/test_end_to_end.py)."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ceag._io import CEAG_CHECKPOINT_MAGIC
from ceag.nn import MaskedLinear
from ceag.train import CheckpointError, TrainConfig, Trainer, epoch_permutation, load_checkpoint, save_checkpoint

G = 4
EPS = 0.02


def _data(seed: int = 0, n: int = 4000, d: int = 16):
    """Same construction as tests/test_end_to_end.py: 70/10/10/10% groups, one rule each."""
    gen = torch.Generator().manual_seed(seed)
    group = torch.multinomial(torch.tensor([0.7, 0.1, 0.1, 0.1]), n, replacement=True, generator=gen)
    x = torch.randn(n, d, generator=gen)
    rules = torch.randn(G, d, generator=torch.Generator().manual_seed(123))
    y = ((x * rules[group]).sum(1) > 0).long()
    inputs = torch.cat([x, nn.functional.one_hot(group, G).float()], 1)
    return inputs, y, group


def _model(d_in: int, seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        MaskedLinear(d_in, 64), nn.ReLU(), nn.Dropout(dropout), MaskedLinear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )


@pytest.fixture(scope="module")
def small():
    x, y, g = _data(n=1200)
    return TensorDataset(x, y, g), TensorDataset(*_data(seed=1, n=400))


def _config(tmp: Path | None, **kw) -> TrainConfig:
    base = dict(
        num_groups=G,
        method="ceag",
        tolerance=EPS,
        dual_lr=0.05,
        buffer_size=10,
        method_options={"multiplier_sum_warning": None},
        dense_epochs=1,
        dense_lr=0.05,
        final_sparsity=0.8,
        pruning_epochs=2,
        mitigation_epochs=3,
        lr=0.02,
        batch_size=100,
        eval_batch_size=600,
        progress=False,
        output_dir=None if tmp is None else str(tmp),
    )
    base.update(kw)
    return TrainConfig(**base)


def _same_history(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        if ra.keys() != rb.keys():
            return False
        for k in ra:
            va, vb = ra[k], rb[k]
            if isinstance(va, float) and isinstance(vb, float) and math.isnan(va) and math.isnan(vb):
                continue
            if va != vb:
                return False
    return True


def _assert_same_run(t1: Trainer, t2: Trainer) -> None:
    s1, s2 = t1.model.state_dict(), t2.model.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert torch.equal(t1.method.multipliers, t2.method.multipliers)
    assert torch.equal(t1.method.buffer, t2.method.buffer)
    assert _same_history(t1.history, t2.history), (t1.history, t2.history)
    # The dense model's per-sample results came back too: the reports are paired and the same.
    for split in ("train", "test"):
        r1, r2 = t1.report(split), t2.report(split)
        assert r1.interval == r2.interval == "paired"
        assert torch.equal(r1.psi_ci[1].nan_to_num(-9), r2.psi_ci[1].nan_to_num(-9)) and r1.status == r2.status


# ---------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(small, tmp_path_factory):
    train, test = small
    t = Trainer(_config(tmp_path_factory.mktemp("full")), _model(20, dropout=0.1), train, test)
    t.fit()
    return t


@pytest.mark.parametrize(
    "stop",
    [
        {"stop_after_epoch": 0},  # end of the dense phase: dense statistics computed, then saved
        {"stop_after_epoch": 2},  # last GMP epoch: constraints turn on after resuming
        {"stop_at_step": 40, "checkpoint_every_steps": 7},  # mid-epoch (step 35 checkpoint)
    ],
    ids=["after-dense", "after-pruning", "mid-epoch"],
)
def test_resume_is_bit_identical_to_uninterrupted_run(small, uninterrupted, tmp_path, stop):
    train, test = small
    stop = dict(stop)
    every = stop.pop("checkpoint_every_steps", 0)
    cfg = _config(tmp_path, checkpoint_every_steps=every)
    first = Trainer(cfg, _model(20, dropout=0.1), train, test)
    first.fit(**stop)
    assert first.epoch < cfg.total_epochs
    torch.manual_seed(12345)  # the global RNG state must come from the checkpoint
    # A fresh process would build the model again (different init: the weights must be loaded).
    second = Trainer(cfg, _model(20, seed=7, dropout=0.1), train, test)
    second.fit(resume=True)
    assert second.epoch == cfg.total_epochs
    _assert_same_run(uninterrupted, second)


def test_resume_of_finished_run_is_a_no_op_and_resume_without_checkpoint_starts_fresh(small, uninterrupted, tmp_path):
    train, test = small
    cfg = _config(tmp_path)
    t = Trainer(cfg, _model(20, dropout=0.1), train, test)
    t.fit(resume=True)  # nothing there yet: a fresh run
    _assert_same_run(uninterrupted, t)
    again = Trainer(cfg, _model(20, dropout=0.1), train, test)
    again.fit(resume=True)
    _assert_same_run(uninterrupted, again)


def test_report_is_unpaired_without_the_dense_models_own_results(small, uninterrupted):
    """Given only the dense statistics (dense_stats=), the trainer cannot pair samples: the
    report says so and uses the conservative interval, which is wider."""
    train, test = small
    cfg = _config(None, dense_epochs=0, pruning_epochs=0, mitigation_epochs=1)
    t = Trainer(cfg, copy.deepcopy(uninterrupted.model), train, test, dense_stats=uninterrupted.dense_stats)
    t.fit()
    assert t.report("train").interval == "unpaired"
    assert uninterrupted.report("train").interval == "paired"
    with pytest.raises(ValueError, match="split must be one of train, test"):
        t.report("val")


def test_resume_with_a_different_config_names_the_field(small, tmp_path):
    train, test = small
    Trainer(_config(tmp_path), _model(20), train, test).fit(stop_after_epoch=0)
    other = Trainer(_config(tmp_path, dual_lr=0.01, progress=True), _model(20), train, test)
    with pytest.raises(ValueError, match="dual_lr"):
        other.fit(resume=True)


def test_epoch_permutation_is_a_function_of_seed_and_epoch():
    assert torch.equal(epoch_permutation(100, 0, 3), epoch_permutation(100, 0, 3))
    assert not torch.equal(epoch_permutation(100, 0, 3), epoch_permutation(100, 0, 4))
    assert not torch.equal(epoch_permutation(100, 0, 3), epoch_permutation(100, 1, 3))
    assert sorted(epoch_permutation(100, 5, 2).tolist()) == list(range(100))


# ---------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------


@pytest.fixture
def checkpointed(small, tmp_path):
    train, test = small
    t = Trainer(_config(tmp_path), _model(20), train, test)
    t.fit(stop_after_epoch=1)
    return t


def test_crash_mid_write_leaves_previous_checkpoint_readable(checkpointed, monkeypatch):
    t = checkpointed
    path = t.checkpoint_path
    before = path.read_bytes()
    assert load_checkpoint(path)["epoch"] == 2

    def crash(fd):  # the temp file is (partly) written, the rename has not happened
        raise OSError("simulated power loss")

    monkeypatch.setattr(os, "fsync", crash)
    t.epoch = 99
    with pytest.raises(OSError, match="power loss"):
        t.save()
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []

    # A crash between writing and renaming (os.replace never runs) is just as harmless.
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        t.save()
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "header"])
def test_corrupted_checkpoint_is_detected(checkpointed, damage):
    path = checkpointed.checkpoint_path
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-100] ^= 0x01
        match = "SHA-256"
    elif damage == "truncate":
        data = data[: len(data) // 2]
        match = "truncated"
    elif damage == "garbage":
        data = bytearray(b"PK\x03\x04 not ours")
        match = "not a ceag checkpoint"
    else:
        data[len(CEAG_CHECKPOINT_MAGIC) + 2] ^= 0x20
        match = "header|truncated|SHA-256"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    # Resuming names the bad file and falls back to the checkpoint before it (epoch 1)...
    prev = checkpointed.previous_checkpoint_path
    assert load_checkpoint(prev)["epoch"] == 1
    fresh = Trainer(checkpointed.config, _model(20), checkpointed.train_set, checkpointed.test_set)
    with pytest.warns(RuntimeWarning) as caught:
        fresh.fit(resume=True, stop_after_epoch=1)
    said = [str(w.message) for w in caught]
    assert any(f"unusable checkpoint: {path}" in m for m in said), said
    assert any(f"resuming from the previous checkpoint {prev}" in m for m in said), said
    # ...and the next save replaces the bad file, keeping the good one as prev.ckpt.
    assert load_checkpoint(path)["epoch"] == 2 and load_checkpoint(prev)["epoch"] == 1
    # With every checkpoint unusable, resuming refuses (never silently starts over).
    path.write_bytes(bytes(data))
    prev.write_bytes(prev.read_bytes()[:-10])
    again = Trainer(checkpointed.config, _model(20), checkpointed.train_set, checkpointed.test_set)
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="no usable checkpoint"):
        again.fit(resume=True)


def test_save_load_roundtrip(tmp_path):
    state = {"a": torch.arange(5), "b": [1, "x", None]}
    save_checkpoint(state, tmp_path / "sub" / "c.ckpt")
    out = load_checkpoint(tmp_path / "sub" / "c.ckpt")
    assert torch.equal(out["a"], state["a"]) and out["b"] == state["b"]


# ---------------------------------------------------------------------------------------
# History, phases
# ---------------------------------------------------------------------------------------


def test_history_files_and_phase_plumbing(uninterrupted):
    t = uninterrupted
    cfg = t.config
    out = Path(cfg.output_dir)
    df = pd.read_csv(out / "history.csv")
    expected = {
        "epoch",
        "phase",
        "step",
        "lr",
        "sparsity",
        "active",
        "train_objective",
        "train_batch_loss",
        "multiplier_sum",
        "multiplier_max",
    }
    for split in ("train", "test"):
        expected |= {f"{split}_{k}" for k in ("accuracy", "loss", "accuracy_gap", "psi_pw", "max_psi", "frac_within")}
    assert expected <= set(df.columns)
    assert len(df) == cfg.total_epochs
    saved = json.loads((out / "history.json").read_text())
    assert saved["config"]["method"] == "ceag" and len(saved["history"]) == cfg.total_epochs

    h = t.history
    assert [r["phase"] for r in h] == ["dense", "pruning", "pruning", "mitigation", "mitigation", "mitigation"]
    # Constraints off (and multipliers at 0) during the dense and GMP phases, on afterwards.
    assert [r["active"] for r in h] == [False, False, False, True, True, True]
    assert all(r["multiplier_sum"] == 0.0 for r in h[:3])
    assert h[-1]["multiplier_sum"] > 0
    # Per-group multiplier trajectories: in history.json (for plots), not in the CSV.
    assert "multipliers" not in df.columns and "multipliers" not in h[0]
    lam = [r["multipliers"] for r in h[1:]]
    assert all(len(v) == cfg.num_groups for v in lam)
    assert sum(lam[-1]) == pytest.approx(h[-1]["multiplier_sum"]) and max(lam[-1]) == h[-1]["multiplier_max"]
    assert saved["history"][-1]["multipliers"] == lam[-1]
    # Cubic GMP schedule from 0 to 0.8 over the two pruning epochs, final sparsity at epoch 3.
    sp = [r["sparsity"] for r in h]
    assert sp[0] == 0.0 and sp[1] == 0.0 and 0.6 < sp[2] < 0.8 and abs(sp[3] - 0.8) < 1e-3 and sp[-1] == sp[3]
    # Step LR decay at 60/80/90% of the 5 sparse epochs: milestones 3 and 4.
    assert [r["lr"] for r in h[1:]] == pytest.approx([0.02, 0.02, 0.02, 0.002, 0.0002])
    # Pruned weights stayed exactly zero through training (masks re-applied).
    for m in t.model.modules():
        if isinstance(m, MaskedLinear):
            assert bool((m.weight[~m.mask] == 0).all())
    # ψ reported on the dense phase as NaN (no sparse model yet), numbers afterwards.
    assert math.isnan(h[0]["train_max_psi"]) and not math.isnan(h[-1]["test_psi_pw"])


def _nft_and_ceag(seed: int) -> tuple[dict, dict]:
    """The last history rows of NFT and CEAG fine-tuning one dense model (data, model, order by ``seed``)."""
    x, y, g = _data(seed)
    model = _model(x.shape[1], seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(30):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 128):
            j = perm[i : i + 128]
            loss = nn.functional.cross_entropy(model(x[j]), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    reports = {}
    for name in ("nft", "ceag"):
        cfg = _config(
            None,
            method=name,
            dense_epochs=0,
            pruning_epochs=0,
            mitigation_epochs=20,
            batch_size=128,
            weight_decay=0.0,
            lr_milestones=(0.75,),
            buffer_size=20,
            eval_test=False,
            seed=seed,
            method_options={} if name == "nft" else {"multiplier_sum_warning": None},
        )
        t = Trainer(cfg, copy.deepcopy(model), TensorDataset(x, y, g))
        t.fit()
        reports[name] = t.history[-1]
    return reports["nft"], reports["ceag"]


def test_nft_vs_ceag_through_trainer():
    """The end-to-end effect on three seeds: NFT leaves minority groups above ε (above 2ε on
    average), CEAG keeps every group within ε on every seed at NFT's accuracy (± 3 points).
    Measured (AMD EPYC, seeds 0-4, train max ψ): NFT 6.4, 3.3, 8.3, 7.8, 9.1; CEAG 0.3-1.1,
    accuracy within 1.5 points."""
    seeds = (0, 1, 2)
    runs = {seed: _nft_and_ceag(seed) for seed in seeds}

    def mean(method: int, key: str) -> float:
        return sum(pair[method][key] for pair in runs.values()) / len(seeds)

    assert mean(0, "train_max_psi") > 2 * EPS, runs
    assert mean(1, "train_psi_pw") < 0.75 * mean(0, "train_psi_pw"), runs  # measured 3.5 vs 7.7
    for seed, (nft, ceag) in runs.items():
        assert nft["train_max_psi"] > EPS, (seed, nft)
        assert ceag["train_max_psi"] <= EPS + 0.005, (seed, ceag)
        assert abs(ceag["train_accuracy"] - nft["train_accuracy"]) <= 0.03, seed
        assert nft["multiplier_sum"] == 0 and ceag["multiplier_sum"] > 0, seed


def test_constrain_min_count_leaves_small_groups_unconstrained(small):
    train, _ = small
    counts = torch.bincount(train.tensors[2], minlength=G)
    threshold = int(counts.max())  # only the largest group stays constrained
    t = Trainer(_config(None, constrain_min_count=threshold, eval_test=False), _model(train.tensors[0].shape[1]), train)
    t.fit()
    constrained = counts >= threshold
    assert t.method.constrained.tolist() == constrained.tolist()
    assert (t.method.multipliers[~constrained] == 0).all()
    assert t.history[-1]["multipliers"][int(counts.argmin())] == 0


# ---------------------------------------------------------------------------------------
# Config validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("method", "fairgrape"),
        ("final_sparsity", 1.0),
        ("final_sparsity", -0.1),
        ("initial_sparsity", 0.95),  # > final_sparsity
        ("tolerance", -0.01),
        ("dense_epochs", -1),
        ("mitigation_epochs", -2),
        ("pruning_epochs", 1.5),
        ("pruning_frequency", 0),
        ("dual_lr", 0.0),
        ("lr", -1.0),
        ("momentum", 1.0),
        ("batch_size", 0),
        ("lr_milestones", (0.5, 1.2)),
        ("buffer_size", 0),
        ("num_groups", 0),
        ("min_count", 0),
        ("constrain_min_count", -1),
        ("pruning_scope", "row"),
        ("device", "not-a-device"),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises((ValueError, TypeError), match=field):
        _config(None, **{field: value})


def test_trainer_rejects_non_config(small):
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer({"num_groups": G}, _model(20), small[0])  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["nft", "ceag"])
def test_pruned_weights_stay_exactly_zero_after_every_step(small, method):
    """The Trainer no longer re-masks the weights after each step (0.4 ms of adult's 7 ms step):
    zero gradients at pruned positions and the optimizer state zeroed at each pruning keep
    them at exactly 0 under SGD with momentum and weight decay. Checked after every step."""
    train, test = small
    options = {"method_options": {}} if method == "nft" else {}
    cfg = _config(None, method=method, weight_decay=1e-3, **options)
    trainer = Trainer(cfg, _model(train.tensors[0].shape[1]), train, test)
    checked = []

    def check(t: Trainer) -> None:
        for m in t.model.modules():
            if isinstance(m, MaskedLinear):
                assert not bool(m.weight[~m.mask].any()), f"step {t.global_step}: a pruned weight moved"
        checked.append(t.global_step)

    trainer.on_batch_end = check
    trainer.fit()
    assert len(checked) == trainer.global_step > 0
    assert any(float((~m.mask).float().mean()) > 0.5 for m in trainer.model.modules() if isinstance(m, MaskedLinear))
