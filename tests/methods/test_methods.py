"""ceag.methods: the primal identity, the dual step, replay-buffer estimates, state dicts."""

from __future__ import annotations

import math
import warnings
from collections import deque

import pytest
import torch
import torch.nn.functional as F

import ceag.methods as methods_module
import ceag.methods.buffers
import ceag.methods.constrained
import ceag.methods.dual
from ceag.methods import CEAG, EL, ELRB, NFT, build_method, primal_group_weights
from ceag.metrics import GroupStats

G = 6


def _dense(num_groups: int = G, seed: int = 0) -> GroupStats:
    gen = torch.Generator().manual_seed(seed)
    count = torch.randint(20, 200, (num_groups,), generator=gen)
    correct = (count.double() * (0.6 + 0.4 * torch.rand(num_groups, generator=gen, dtype=torch.float64))).long()
    loss_sum = count.double() * torch.rand(num_groups, generator=gen, dtype=torch.float64)
    return GroupStats(count, correct, loss_sum)


def _batch(n=40, c=5, groups=(0, 1, 2, 4), seed=0, dtype=torch.float64):
    """A batch whose groups are ``groups`` only (3 and 5 absent by default)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen, dtype=dtype, requires_grad=True)
    target = torch.randint(0, c, (n,), generator=gen)
    gsel = torch.tensor(groups)[torch.randint(0, len(groups), (n,), generator=gen)]
    return logits, target, gsel


def _set_multipliers(method, values):
    with torch.no_grad():
        method.multiplier.weight.copy_(torch.as_tensor(values, dtype=torch.float32).view(-1, 1))


def _psi_hat_batch(dense: GroupStats, logits, target, group):
    correct = (logits.argmax(1) == target).double()
    count = torch.bincount(group, minlength=G).double()
    acc = torch.bincount(group, correct, minlength=G) / count.clamp_min(1)
    n = count.sum()
    dense_acc = torch.nan_to_num(dense.accuracy)
    dense_overall = (count * dense_acc).sum() / n
    return (dense_acc - acc) - (dense_overall - correct.sum() / n), count > 0


# -- primal objective -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ceag_paper_primal_objective_is_the_per_sample_weighted_cross_entropy(seed):
    dense = _dense(seed=seed)
    method = CEAG(G, dense, tolerance=0.01, buffer_size=None, dual_lr=1e-3, primal="paper", multiplier_sum_warning=None)
    gen = torch.Generator().manual_seed(seed + 10)
    _set_multipliers(method, 0.2 * torch.rand(G, generator=gen))
    logits, target, group = _batch(seed=seed)
    out = method.step(logits, target, group)
    lam = out.multipliers.double()
    assert torch.equal(lam.float(), method.multipliers)

    # L_B + Σ_{g in batch} λ_g ψ̃_g, plain PyTorch.
    ce = F.cross_entropy(logits, target, reduction="none")
    count = torch.bincount(group, minlength=G).double()
    present = count > 0
    lg = torch.zeros(G, dtype=ce.dtype).index_add(0, group, ce) / count.clamp_min(1)
    lb = ce.mean()
    psi_tilde = (lg - dense.loss) - (lb - dense.overall_loss)
    lagrangian = lb + (lam * torch.where(present, psi_tilde, 0)).sum()
    constant = (lam * torch.where(present, dense.loss - dense.overall_loss, 0)).sum()
    torch.testing.assert_close(out.loss, lagrangian + constant)
    torch.testing.assert_close(out.surrogate[present], psi_tilde[present].detach())
    assert out.surrogate[~present].isnan().all()

    # Same gradient as one per-sample weighted CE with w_i = (1 - Λ_B)/N + λ_{g_i}/n_{g_i}.
    n = len(target)
    w_i = (1 - lam[present].sum()) / n + lam[group] / count[group]
    (g_method,) = torch.autograd.grad(out.loss, logits)
    (g_lagr,) = torch.autograd.grad(lagrangian, logits, retain_graph=True)
    (g_weighted,) = torch.autograd.grad((w_i * ce).sum(), logits)
    torch.testing.assert_close(g_method, g_weighted)
    torch.testing.assert_close(g_method, g_lagr)
    torch.testing.assert_close(out.group_weight[present], ((1 - lam[present].sum()) / n + lam / count)[present])
    assert (out.group_weight[~present] == 0).all()


def test_primal_group_weights_zero_coefficients_give_the_mean():
    count = torch.tensor([3, 0, 5, 2])
    w = primal_group_weights(torch.zeros(4, dtype=torch.float64), count)
    torch.testing.assert_close(w, torch.tensor([0.1, 0.0, 0.1, 0.1], dtype=torch.float64))


def test_nft_is_the_mean_cross_entropy():
    logits, target, group = _batch(dtype=torch.float32)
    out = NFT(G).step(logits, target, group)
    ref = F.cross_entropy(logits, target)
    torch.testing.assert_close(out.loss, ref)
    (g1,) = torch.autograd.grad(out.loss, logits)
    (g2,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g1, g2)
    assert (out.multipliers == 0).all()


# -- dual step ---------------------------------------------------------------------------------


def test_ceag_batch_dual_step_direction_and_projection():
    dense = _dense()
    eta = 0.5
    method = CEAG(G, dense, tolerance=0.05, buffer_size=None, dual_lr=eta, margin=0.0, multiplier_sum_warning=None)
    lam0 = torch.tensor([0.0, 0.01, 0.3, 0.2, 0.0, 0.4])
    _set_multipliers(method, lam0)
    logits, target, group = _batch()
    psi, observed = _psi_hat_batch(dense, logits, target, group)
    out = method.step(logits, target, group)
    v = psi - 0.05
    expected = torch.where(observed, (lam0.double() + eta * v).clamp_min(0), lam0.double())
    torch.testing.assert_close(method.multipliers.double(), expected, atol=1e-6, rtol=0)
    assert (method.multipliers >= 0).all()
    torch.testing.assert_close(out.violation[observed], v[observed])
    assert out.violation[~observed].isnan().all()
    # Absent groups (3 and 5) untouched; a negative violation at λ=0 stays at 0 (projection).
    assert method.multipliers[3] == lam0[3] and method.multipliers[5] == lam0[5]
    assert ((v < 0) & observed).any()


@pytest.mark.parametrize("cls_kwargs", [{"buffer_size": None}, {"buffer_size": 3}])
def test_inactive_method_is_nft_and_leaves_multipliers(cls_kwargs):
    method = CEAG(G, _dense(), active=False, dual_lr=1.0, **cls_kwargs)
    logits, target, group = _batch(dtype=torch.float32)
    out = method.step(logits, target, group)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, target))
    assert (method.multipliers == 0).all()
    if method.uses_buffers:
        assert method.fill.sum() > 0  # buffers keep filling while inactive
    method.active = True
    method.step(*_batch(seed=1, dtype=torch.float32))
    assert method.active


def test_max_multiplier_sum_and_warning():
    method = CEAG(G, _dense(), buffer_size=None, dual_lr=10.0, max_multiplier_sum=0.5, multiplier_sum_warning=0.4, primal="paper")
    logits, target, group = _batch()
    with pytest.warns(RuntimeWarning, match="multipliers sum"):
        method.step(logits, target, group)
    assert float(method.multipliers.sum()) <= 0.5 + 1e-6
    # Warned once per crossing: no second warning while it stays above.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.step(logits, target, group)


def test_no_multiplier_sum_warning_without_a_sign_flip():
    """The positive primal has no sign flip at Σλ = 1: no warning, however large Σλ grows."""
    method = CEAG(G, _dense(), buffer_size=None, dual_lr=10.0, multiplier_sum_warning=0.4)
    assert method.primal == "positive"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for s in range(3):
            method.step(*_batch(seed=s))
    assert float(method.multipliers.sum()) > 1


@pytest.mark.parametrize("make", [lambda **k: CEAG(G, _dense(), **k), lambda **k: ELRB(G, _dense().shares, **k)])
@pytest.mark.parametrize("buffer_size", [None, 3])
def test_unconstrained_groups_keep_zero_multipliers(make, buffer_size):
    # Groups 1 and 2 are observed and (with this dual_lr) violate; only the constrained ones move.
    constrained = torch.tensor([True, False, False, True, True, True])
    method = make(buffer_size=buffer_size, dual_lr=5.0, tolerance=0.0, constrained=constrained, multiplier_sum_warning=None)
    free = make(buffer_size=buffer_size, dual_lr=5.0, tolerance=0.0, multiplier_sum_warning=None)
    for seed in range(4):
        batch = _batch(seed=seed, dtype=torch.float32)
        out = method.step(*batch)
        ref = free.step(*batch)
        assert out.violation[~constrained].isnan().all()
        torch.testing.assert_close(out.violation[constrained], ref.violation[constrained], equal_nan=True)
    assert (method.multipliers[~constrained] == 0).all()
    assert (free.multipliers[~constrained] > 0).any()
    torch.testing.assert_close(method.multipliers[constrained], free.multipliers[constrained])


# -- replay buffers -----------------------------------------------------------------------------


def test_ceag_buffer_estimates_match_deques_with_share_weighting():
    k = 4
    dense = _dense()
    eps = 0.02
    method = CEAG(G, dense, tolerance=eps, buffer_size=k, dual_lr=0.1, margin=0.0, multiplier_sum_warning=None)
    deques = [deque(maxlen=k) for _ in range(G)]
    lam = torch.zeros(G, dtype=torch.float64)
    shares = dense.count.double() / dense.count.sum()
    for step in range(6):
        # Group 5 never appears; group 4 rarely (its buffer fills late).
        logits, target, group = _batch(n=12, groups=(0, 1, 2, 3, 0, 1, 4) if step % 3 == 2 else (0, 1, 2, 3), seed=step)
        correct = (logits.argmax(1) == target).tolist()
        for gi, ci in zip(group.tolist(), correct):
            deques[gi].append(float(ci))
        out = method.step(logits, target, group)

        available = torch.tensor([len(d) == k for d in deques])
        acc = torch.tensor([sum(d) / k if len(d) == k else math.nan for d in deques], dtype=torch.float64)
        est = method.estimates()
        assert torch.equal(est.available, available)
        torch.testing.assert_close(est.value, acc, equal_nan=True)
        if available.any():
            p = shares[available]
            overall = (p * acc[available]).sum() / p.sum()
            dense_overall = (p * dense.accuracy[available]).sum() / p.sum()
            torch.testing.assert_close(est.overall, overall)
            psi = (dense.accuracy - acc) - (dense_overall - overall)
            torch.testing.assert_close(est.constraint, torch.where(available, psi, math.nan), equal_nan=True)
            lam = torch.where(available, (lam + 0.1 * (psi - eps)).clamp_min(0), lam)
        else:
            assert math.isnan(float(est.overall))
        torch.testing.assert_close(method.multipliers.double(), lam, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.violation, torch.where(available, est.constraint - eps, math.nan), equal_nan=True)
    assert not est.available[5] and est.available[:4].all()


@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("make", [lambda **k: CEAG(G, _dense(), **k), lambda **k: ELRB(G, _dense().shares, **k)])
def test_cached_buffer_sums_follow_every_write(make, backend, incremental, monkeypatch):
    # With many groups per batch sample the per-group sums are updated only for the groups a
    # step touches; any other write to the buffer (load_state_dict, a direct copy) must force
    # a full recount. With few, every read recounts.
    monkeypatch.setattr(ceag.methods.buffers, "_INCREMENTAL_SUMS_RATIO", 0 if incremental else 10**9)
    method = make(buffer_size=3, dual_lr=0.1, multiplier_sum_warning=None, backend=backend)
    other = make(buffer_size=3, dual_lr=0.1, multiplier_sum_warning=None, backend=backend)
    full = lambda m: m.buffer.sum(dim=1, dtype=torch.float64)  # noqa: E731
    for step in range(8):
        groups = (0, 1, 2, 4) if step % 2 else (1, 3)
        method.step(*_batch(n=9, groups=groups, seed=step, dtype=torch.float32))
        other.step(*_batch(n=5, groups=(0, 5), seed=100 + step, dtype=torch.float32))
        assert torch.equal(method._buffer_sums()[0], full(method))
        if step == 3:
            method.buffer.copy_(torch.ones_like(method.buffer))
            assert torch.equal(method._buffer_sums()[0], full(method))
        if step == 5:
            method.load_state_dict(other.state_dict())
            assert torch.equal(method._buffer_sums()[0], full(other))


def test_overall_estimate_is_share_weighted_not_unweighted():
    dense = GroupStats(torch.tensor([900, 100]), torch.tensor([900, 100]), torch.zeros(2, dtype=torch.float64))
    method = CEAG(2, dense, buffer_size=2)
    logits = torch.tensor([[1.0, 0.0]] * 4)
    target = torch.tensor([0, 0, 1, 1])  # group 0 all correct, group 1 all wrong
    method.step(logits, target, torch.tensor([0, 0, 1, 1]))
    est = method.estimates()
    torch.testing.assert_close(est.overall, torch.tensor(0.9, dtype=torch.float64))
    torch.testing.assert_close(est.constraint, torch.tensor([-0.1, 0.9], dtype=torch.float64))


def test_ignored_samples_never_enter_buffers():
    method = CEAG(2, _dense(2), buffer_size=3)
    logits = torch.randn(4, 3)
    method.step(logits, torch.tensor([0, -100, -100, 1]), torch.tensor([0, 0, 1, 1]))
    assert method.fill.tolist() == [1, 1]


def test_el_rb_buffer_estimates_match_deques():
    k = 3
    shares = torch.tensor([0.4, 0.3, 0.2, 0.05, 0.05, 0.0], dtype=torch.float64)
    method = ELRB(G, shares, buffer_size=k, tolerance=0.1, dual_lr=0.1)
    deques = [deque(maxlen=k) for _ in range(G)]
    for step in range(4):
        logits, target, group = _batch(n=10, seed=step)
        for gi, li in zip(group.tolist(), F.cross_entropy(logits, target, reduction="none").tolist()):
            deques[gi].append(li)
        method.step(logits, target, group)
    available = torch.tensor([len(d) == k for d in deques])
    loss = torch.tensor([sum(d) / k if len(d) == k else math.nan for d in deques], dtype=torch.float64)
    est = method.estimates()
    assert torch.equal(est.available, available)
    torch.testing.assert_close(est.value, loss, equal_nan=True, rtol=1e-5, atol=1e-6)
    overall = (shares[available] * loss[available]).sum() / shares[available].sum()
    torch.testing.assert_close(est.overall, overall, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        est.constraint, torch.where(available, (loss - overall).abs(), math.nan), equal_nan=True, rtol=1e-5, atol=1e-6
    )


# -- EL ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["abs", "signed"])
def test_el_dual_step_and_primal_coefficients(variant):
    eta, eps = 0.3, (0.05 if variant == "abs" else 0.0)
    method = EL(G, variant=variant, tolerance=eps, dual_lr=eta, multiplier_sum_warning=None)
    lam0 = torch.tensor([0.0, 0.1, 0.2, 0.0, 0.0, 0.3])
    _set_multipliers(method, lam0)
    logits, target, group = _batch()
    ce = F.cross_entropy(logits, target, reduction="none")
    count = torch.bincount(group, minlength=G).double()
    present = count > 0
    diff = torch.zeros(G, dtype=ce.dtype).index_add(0, group, ce) / count.clamp_min(1) - ce.mean()
    out = method.step(logits, target, group)

    v = (diff.abs() - eps) if variant == "abs" else diff
    new = lam0.double() + eta * v.detach()
    if variant == "abs":
        new = new.clamp_min(0)
    expected = torch.where(present, new, lam0.double())
    torch.testing.assert_close(method.multipliers.double(), expected, atol=1e-6, rtol=0)
    if variant == "signed":
        assert (method.multipliers < 0).any()  # equality multipliers have free sign

    lam = method.multipliers.double()
    surrogate = diff.abs() if variant == "abs" else diff
    lagrangian = ce.mean() + (torch.where(present, lam, 0) * torch.where(present, surrogate, 0)).sum()
    torch.testing.assert_close(out.loss, lagrangian)
    (g1,) = torch.autograd.grad(out.loss, logits)
    (g2,) = torch.autograd.grad(lagrangian, logits)
    torch.testing.assert_close(g1, g2)


# -- state dict ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: CEAG(G, _dense(), buffer_size=3, dual_lr=0.2, multiplier_sum_warning=None),
        lambda: CEAG(
            G,
            _dense(),
            buffer_size=3,
            dual_lr=0.2,
            dual_optimizer="nupi",
            dual_optimizer_kwargs={"Kp": 1.0, "Ki": 1.0},
            multiplier_sum_warning=None,
        ),
        lambda: CEAG(G, _dense(), buffer_size=None, dual_lr=0.2, multiplier_sum_warning=None),
        lambda: ELRB(G, _dense().shares, buffer_size=2, dual_lr=0.2, multiplier_sum_warning=None),
        lambda: EL(G, variant="signed", dual_lr=0.2),
    ],
    ids=["ceag-sgd", "ceag-nupi", "ceag-batch", "el_rb", "el-signed"],
)
def test_state_dict_round_trip_gives_identical_next_steps(make):
    a = make()
    for s in range(4):
        a.step(*_batch(seed=s))
    state = a.state_dict()
    b = make()
    b.load_state_dict(state)
    for s in range(4, 7):
        batch = _batch(seed=s)
        oa, ob = a.step(*batch), b.step(*_batch(seed=s))
        assert torch.equal(oa.loss.detach(), ob.loss.detach())
        assert torch.equal(a.multipliers, b.multipliers)
        if a.uses_buffers:
            assert torch.equal(a.buffer, b.buffer) and torch.equal(a.fill, b.fill)
    assert a.num_steps == b.num_steps == 7


def test_load_state_dict_rejects_another_method():
    with pytest.raises(ValueError, match="method"):
        EL(G).load_state_dict(NFT(G).state_dict())


# -- arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"tolerance": -0.1}, "tolerance"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"dual_lr": 0.0}, "dual_lr"),
        ({"dual_lr": -1e-3}, "dual_lr"),
        ({"dual_optimizer": "adam"}, "dual_optimizer"),
        ({"max_multiplier_sum": 0.0}, "max_multiplier_sum"),
        ({"constrained": torch.ones(G + 1, dtype=torch.bool)}, "constrained"),
        ({"constrained": torch.ones(G)}, "constrained"),
        ({"constrained": [True] * G}, "constrained"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        CEAG(G, _dense(), **kwargs)


def test_bad_shapes_and_groups_raise():
    method = CEAG(G, _dense())
    logits, target, group = _batch()
    with pytest.raises(ValueError, match="target"):
        method.step(logits, target[:-1], group)
    with pytest.raises(ValueError, match="logits"):
        method.step(logits[0], target, group)
    with pytest.raises((ValueError, RuntimeError), match="group"):
        method.step(logits, target, group + G)
    with pytest.raises(ValueError, match="dense"):
        CEAG(G + 1, _dense())
    with pytest.raises(ValueError, match="group_shares"):
        EL(G, buffer_size=4)
    with pytest.raises(ValueError, match="tolerance"):
        EL(G, variant="signed", tolerance=0.1)
    with pytest.raises(ValueError, match="maximize"):
        CEAG(G, _dense(), dual_optimizer=lambda p, lr: torch.optim.SGD(p, lr=lr))


def test_build_method_names():
    dense = _dense()
    assert isinstance(build_method("nft", G), NFT)
    assert build_method("ceag", G, dense=dense).buffer_size == 40
    assert build_method("ceag_batch", G, dense=dense).buffer_size is None
    assert isinstance(build_method("el_rb", G, dense=dense), ELRB)
    with pytest.raises(ValueError, match="name"):
        build_method("fairgrape", G)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CEAG(G, _dense(), buffer_size=3, dual_lr=0.2, multiplier_sum_warning=None),
        lambda: CEAG(G, _dense(), buffer_size=None, dual_lr=0.2, multiplier_sum_warning=None),
        lambda: EL(G, variant="signed", dual_lr=0.2),
    ],
    ids=["ceag-buffers", "ceag-batch", "el-signed"],
)
def test_direct_sgd_dual_step_equals_cooper_lagrangian_path(make, monkeypatch):
    """The stateless-SGD shortcut gives exactly the update of Cooper's dual-Lagrangian backward."""
    direct = make()
    assert ceag.methods.dual._is_stateless_sgd(direct.dual_optimizer)
    via_cooper = make()
    for s in range(6):
        direct.step(*_batch(seed=s))
        with monkeypatch.context() as m:
            m.setattr(ceag.methods.constrained, "_is_stateless_sgd", lambda opt: False)
            via_cooper.step(*_batch(seed=s))
        torch.testing.assert_close(direct.multipliers, via_cooper.multipliers, rtol=1e-6, atol=1e-7)
    assert direct.multipliers.abs().sum() > 0


# -- the levers of issue 11: primal objective, multiplier scale, PI dual -------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_primal_weights_positive_and_normalized(seed):
    gen = torch.Generator().manual_seed(seed)
    count = torch.tensor([5, 0, 30, 1, 64, 0], dtype=torch.float64)
    coef = 3.0 * torch.rand(G, generator=gen, dtype=torch.float64)  # Σλ far past 1
    coef[2] = 0.0  # a group whose own constraint is satisfied
    present = count > 0
    n = count.sum()
    paper = primal_group_weights(coef, count, "paper")
    positive = primal_group_weights(coef, count, "positive")
    normalized = primal_group_weights(coef, count, "normalized")
    c_b = coef[present].sum()
    torch.testing.assert_close(paper[present], (1 - c_b) / n + coef[present] / count[present])
    assert c_b > 1 and paper[2] < 0  # past Σλ = 1 the paper's objective rewards a higher loss on g
    torch.testing.assert_close(positive[present], 1 / n + coef[present] / count[present])
    assert bool((positive[present] > 0).all()) and bool((normalized[present] > 0).all())
    torch.testing.assert_close((normalized * count).sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(normalized, positive / (1 + c_b))  # same direction, unit mass
    for w in (paper, positive, normalized):
        assert bool((w[~present] == 0).all())
    with pytest.raises(ValueError, match="primal"):
        primal_group_weights(coef, count, "dual")


@pytest.mark.parametrize("primal", ["paper", "positive", "normalized"])
def test_ceag_primal_objective_of_each_formulation(primal):
    """loss = Σ_i w_{g_i} CE_i with the weights of ``primal`` and the multipliers after the dual step."""
    dense = _dense()
    method = CEAG(G, dense, buffer_size=None, dual_lr=0.5, primal=primal, multiplier_sum_warning=None)
    _set_multipliers(method, [0.4, 0.9, 0.0, 0.3, 0.7, 0.2])
    logits, target, group = _batch()
    out = method.step(logits, target, group)
    count = torch.bincount(group, minlength=G).to(torch.float64)
    lam = out.multipliers.to(torch.float64)
    w = primal_group_weights(lam, count, primal)
    expected = (F.cross_entropy(logits, target, reduction="none") * w[group]).sum()
    torch.testing.assert_close(out.loss, expected)
    if primal != "paper":
        assert bool((out.group_weight[count > 0] > 0).all())


def test_share_scale_weights_are_relative_upweighting():
    """multiplier_scale="share": w_g = (1 + λ_g)/N (positive), λ_g = relative up-weighting of g."""
    method = CEAG(G, _dense(), buffer_size=None, primal="positive", multiplier_scale="share", dual_lr=1e-9)
    lam = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0, 0.1])
    _set_multipliers(method, lam)
    logits, target, group = _batch()
    out = method.step(logits, target, group)
    present = torch.bincount(group, minlength=G) > 0
    n = group.numel()
    torch.testing.assert_close(out.group_weight[present], ((1 + out.multipliers) / n)[present].to(out.group_weight.dtype))


def test_bad_formulation_names_the_argument():
    for kwargs, name in (({"primal": "dual"}, "primal"), ({"multiplier_scale": "log"}, "multiplier_scale")):
        with pytest.raises(ValueError, match=name):
            CEAG(G, _dense(), **kwargs)
    with pytest.raises(ValueError, match="Kp"):
        CEAG(G, _dense(), dual_optimizer="pi", dual_optimizer_kwargs={"Kp": -1.0})


@pytest.mark.parametrize("kp, ki, nu", [(2.0, 1.0, 0.0), (0.0, 1.0, 0.0), (1.0, 0.5, 0.3), (5.0, 0.2, 0.9)])
def test_pi_equals_coopers_nupi_with_sparse_errors(kp, ki, nu):
    """The dense masked PI update is Cooper's nuPI (SGD init) on the observed entries, projection included."""
    import cooper

    gen = torch.Generator().manual_seed(int(kp * 10 + nu * 100))
    n = 9
    a, b = torch.nn.Parameter(torch.zeros(n)), torch.nn.Parameter(torch.zeros(n))
    ours = methods_module.PI([a], lr=0.1, Kp=kp, Ki=ki, ema_nu=nu)
    theirs = cooper.optim.nuPI([b], lr=0.1, Kp=kp, Ki=ki, ema_nu=nu, maximize=True)
    for _ in range(60):
        err = torch.randn(n, generator=gen)
        observed = torch.rand(n, generator=gen) < 0.4
        a.grad = torch.where(observed, err, 0.0)
        ours.step(observed)
        idx = observed.nonzero().view(-1)
        if idx.numel():
            b.grad = torch.sparse_coo_tensor(idx[None], err[idx], size=(n,))
            theirs.step()
        with torch.no_grad():
            a.clamp_(min=0)
            b.clamp_(min=0)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert float(a.sum()) > 0


def test_ceag_pi_dual_matches_nupi_path_and_unobserved_groups_stay():
    """CEAG with dual_optimizer="pi" takes the same multipliers as with Cooper's nuPI."""
    kw = dict(buffer_size=3, dual_lr=0.3, multiplier_sum_warning=None, dual_optimizer_kwargs={"Kp": 2.0, "Ki": 1.0})
    pi = CEAG(G, _dense(), dual_optimizer="pi", **kw)
    nupi = CEAG(G, _dense(), dual_optimizer="nupi", **kw)
    for s in range(10):
        before = pi.multipliers
        out = pi.step(*_batch(seed=s))
        nupi.step(*_batch(seed=s))
        torch.testing.assert_close(pi.multipliers, nupi.multipliers, rtol=1e-6, atol=1e-7)
        unobserved = torch.isnan(out.violation)
        assert torch.equal(pi.multipliers[unobserved], before[unobserved])
    assert float(pi.multipliers.sum()) > 0


@pytest.mark.parametrize("margin", [0.0, 0.5, 1.0])
def test_margin_moves_the_dual_target(margin):
    """The dual step enforces ψ̂_g ≤ (1 − margin) ε: the violation it returns is ψ̂_g − (1 − margin) ε."""
    dense = _dense()
    eps = 0.04
    method = CEAG(G, dense, tolerance=eps, buffer_size=None, dual_lr=0.1, margin=margin)
    logits, target, group = _batch()
    out = method.step(logits, target, group)
    psi, present = _psi_hat_batch(dense, logits, target, group)
    torch.testing.assert_close(out.violation[present], (psi - (1 - margin) * eps)[present])
    assert method.dual_target == pytest.approx((1 - margin) * eps)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="margin"):
            CEAG(G, dense, margin=bad)


@pytest.mark.parametrize("slack", ["se", "sample"])
def test_group_slack_raises_each_groups_target_by_its_size_unit(slack):
    """group_slack: group g's target is (1 − margin) ε + κ u_g, with u_g = √(A_g(1 − A_g) / n_g)
    ("se") or 1 / n_g ("sample"), A_g and n_g the dense model's; a small group gets more slack."""
    dense = _dense()
    eps, kappa = 0.04, 1.5
    method = CEAG(G, dense, tolerance=eps, buffer_size=None, dual_lr=0.1, margin=0.5, group_slack=slack, slack_scale=kappa)
    logits, target, group = _batch()
    out = method.step(logits, target, group)
    psi, present = _psi_hat_batch(dense, logits, target, group)
    n = dense.count.double()
    acc = dense.correct.double() / n
    unit = torch.sqrt(acc * (1 - acc) / n) if slack == "se" else 1 / n
    torch.testing.assert_close(out.violation[present], (psi - 0.5 * eps - kappa * unit)[present])
    small = GroupStats(
        count=torch.tensor([10, 1000]), correct=torch.tensor([8, 800]), loss_sum=torch.zeros(2, dtype=torch.float64)
    )
    got = CEAG(2, small, tolerance=eps, group_slack=slack)._targets
    want = [0.4 / 10**0.5, 0.4 / 1000**0.5] if slack == "se" else [0.1, 0.001]
    assert got.tolist() == pytest.approx(want)
    assert CEAG(2, small, tolerance=eps)._targets.tolist() == [0.0, 0.0]  # "none", margin 1
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="slack_scale"):
            CEAG(G, dense, group_slack=slack, slack_scale=bad)
    with pytest.raises(ValueError, match="group_slack must be one of none, se, sample"):
        CEAG(G, dense, group_slack="size")


@pytest.mark.parametrize("dual_optimizer", ["sgd", "nupi"])
def test_dual_decay_bounds_a_multiplier_at_violation_over_decay(dual_optimizer):
    """A constraint that cannot be met (group 0 always wrong, ψ_0 = 0.5): λ_0 grows without
    bound by plain dual ascent, and settles at ψ_0 / ρ with dual_decay ρ (resilient)."""
    dense = GroupStats(count=torch.tensor([10, 10]), correct=torch.tensor([10, 10]), loss_sum=torch.zeros(2, dtype=torch.float64))
    logits = torch.tensor([[0.0, 1.0]] * 4 + [[1.0, 0.0]] * 4)
    target = torch.zeros(8, dtype=torch.long)
    target[:4] = 0  # group 0 predicts class 1: always wrong; group 1 predicts class 0: right
    group = torch.tensor([0] * 4 + [1] * 4)
    kw = dict(buffer_size=None, dual_lr=0.5, dual_optimizer=dual_optimizer, dual_optimizer_kwargs={"Kp": 0.0, "Ki": 1.0})
    if dual_optimizer == "sgd":
        kw.pop("dual_optimizer_kwargs")
    plain, resilient = CEAG(2, dense, **kw), CEAG(2, dense, dual_decay=1.0, **kw)
    for _ in range(60):
        plain.step(logits, target, group)
        resilient.step(logits, target, group)
    assert float(plain.multipliers[0]) == pytest.approx(60 * 0.5 * 0.5)
    assert float(resilient.multipliers[0]) == pytest.approx(0.5, abs=1e-6)
    assert float(resilient.multipliers[1]) == 0.0
    with pytest.raises(ValueError, match="dual_decay"):
        CEAG(2, dense, dual_decay=-1.0)
