"""ceag.prune: sparsify, magnitude_prune (vs torch.nn.utils.prune), keeping pruned weights at 0."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from ceag.nn import MaskedConv2d, MaskedLinear
from ceag.prune import (
    apply_masks_,
    magnitude_prune,
    mask_optimizer_state_,
    prunable_layers,
    sparsify,
    sparsity_report,
)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 3))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 4 * 4, 20),
        nn.ReLU(),
        nn.Linear(20, 5),
    )


MODELS = {"mlp": (mlp, (12,)), "cnn": (cnn, (3, 8, 8))}


def build(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[kind][0]()


def data(kind: str, n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *MODELS[kind][1], generator=g), torch.randint(0, 3, (n,), generator=g)


# --------------------------------------------------------------------------- sparsify


def test_sparsify_swaps_all_but_first_conv_and_last_linear():
    model = build("cnn")
    params = list(model.parameters())
    x, _ = data("cnn")
    y = model(x)
    assert sparsify(model) is model
    assert [type(m).__name__ for m in model if isinstance(m, (nn.Linear, nn.Conv2d))] == [
        "Conv2d",
        "MaskedConv2d",
        "MaskedConv2d",
        "MaskedLinear",
        "Linear",
    ]
    assert [n for n, _ in prunable_layers(model)] == ["2", "4", "7"]
    assert isinstance(model[2], MaskedConv2d) and model[2].stride == (2, 2) and model[4].groups == 2
    assert all(a is b for a, b in zip(params, model.parameters())), "Parameters must be shared"
    torch.testing.assert_close(model(x), y)  # all-True masks: same function


def test_sparsify_options_exclude_and_idempotence():
    model = sparsify(build("cnn"), keep_first_conv_dense=False, keep_last_linear_dense=False)
    assert [n for n, _ in prunable_layers(model)] == ["0", "2", "4", "7", "9"]
    model = sparsify(build("cnn"), exclude=["4", "7"])
    assert [n for n, _ in prunable_layers(model)] == ["2"]
    nested = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), nn.Linear(4, 2))
    assert [n for n, _ in prunable_layers(sparsify(nested, exclude="1"))] == ["0"]

    model = sparsify(build("cnn"))
    before = list(model.modules())
    magnitude_prune(model, 0.5)
    masks = [m.mask.clone() for _, m in prunable_layers(model)]
    assert sparsify(model) is model
    assert all(a is b for a, b in zip(before, model.modules())), "second sparsify must change nothing"
    assert all(torch.equal(a, m.mask) for a, (_, m) in zip(masks, prunable_layers(model)))


def test_sparsify_validates_and_edge_cases():
    with pytest.raises(ValueError, match="exclude: model has no module named 'nope'"):
        sparsify(build("mlp"), exclude=["nope"])
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        sparsify([nn.Linear(2, 2)])
    pruned = build("mlp")
    tprune.l1_unstructured(pruned[0], "weight", 0.5)
    with pytest.raises(ValueError, match="torch.nn.utils.prune.remove"):
        sparsify(pruned)
    # The root itself: replaced and returned (when not kept dense).
    lin = nn.Linear(3, 2)
    assert sparsify(lin) is lin  # the last linear: dense
    ml = sparsify(lin, keep_last_linear_dense=False)
    assert isinstance(ml, MaskedLinear) and ml.weight is lin.weight
    # A layer registered twice is swapped in both places; subclasses are not swapped.
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.MultiheadAttention(4, 2), nn.Linear(4, 1))
    sparsify(model)
    assert isinstance(model[0], MaskedLinear) and model[0] is model[2]
    assert type(model[3].out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert type(model[4]) is nn.Linear


def test_sparsify_moves_hooks_and_training_flag():
    model = build("mlp").eval()
    seen = []
    handle = model[2].register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    sparsify(model)
    model(torch.randn(2, 12))
    assert seen == ["MaskedLinear"] and not model[2].training
    handle.remove()
    model(torch.randn(2, 12))
    assert seen == ["MaskedLinear"]


# --------------------------------------------------------------------------- magnitude_prune


def _reference_masks(dense: nn.Module, names: list[str], sparsity: float, scope: str) -> list[torch.Tensor]:
    """Masks torch.nn.utils.prune computes on a copy of the dense model's layers ``names``."""
    ref = copy.deepcopy(dense)
    mods = [ref.get_submodule(n) for n in names]
    if scope == "layer":
        for m in mods:
            tprune.l1_unstructured(m, "weight", amount=sparsity)
    else:
        tprune.global_unstructured([(m, "weight") for m in mods], tprune.L1Unstructured, amount=sparsity)
    return [m.weight_mask.bool() for m in mods]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.97])
def test_masks_match_torch_prune(kind, scope, sparsity):
    dense = build(kind, seed=7)  # continuous random weights: no ties
    model = sparsify(copy.deepcopy(dense))
    original = [m.weight.detach().clone() for _, m in prunable_layers(model)]
    assert magnitude_prune(model, sparsity, scope) is model
    layers = prunable_layers(model)
    expected = _reference_masks(dense, [n for n, _ in layers], sparsity, scope)
    for (name, m), ref, w0 in zip(layers, expected, original):
        assert torch.equal(m.mask, ref), f"{name}: mask differs from torch.nn.utils.prune ({scope})"
        assert torch.equal(m.weight[~m.mask], torch.zeros_like(m.weight[~m.mask]))  # exactly zero
        assert torch.equal(m.weight[m.mask], w0[m.mask])  # kept weights untouched
    n_pruned = [int((~m.mask).sum()) for _, m in layers]
    if scope == "layer":  # exactly round(s * numel) per layer
        assert n_pruned == [round(sparsity * m.weight.numel()) for _, m in layers]
    else:
        assert sum(n_pruned) == round(sparsity * sum(m.weight.numel() for _, m in layers))
    # Dense layers (first conv, last linear) untouched.
    for name, m in model.named_modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            torch.testing.assert_close(m.weight, dense.get_submodule(name).weight, rtol=0, atol=0)


def test_global_scope_differs_per_layer():
    model = sparsify(build("mlp"))
    with torch.no_grad():
        model[2].weight.add_(model[2].weight.sign())  # |w| > 1 > every |w| of layer 0
    magnitude_prune(model, 0.3, "global")  # 346 of 384 + 768: all from layer 0
    assert model[2].density == 1.0 and (~model[0].mask).sum() == round(0.3 * (384 + 768))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_masks_only_shrink(scope):
    model = sparsify(build("cnn"))
    magnitude_prune(model, 0.5, scope)
    first = [m.mask.clone() for _, m in prunable_layers(model)]
    with torch.no_grad():  # give the pruned weights the largest magnitudes: still pruned
        for _, m in prunable_layers(model):
            m.weight.copy_(torch.where(m.mask, m.weight, 100.0))
    magnitude_prune(model, 0.3, scope)  # lower target: nothing changes
    assert all(torch.equal(a, m.mask) for a, (_, m) in zip(first, prunable_layers(model)))
    assert all((m.weight[~m.mask] == 0).all() for _, m in prunable_layers(model))
    with torch.no_grad():  # again (the last call zeroed them), then a higher target
        for _, m in prunable_layers(model):
            m.weight.copy_(torch.where(m.mask, m.weight, 100.0))
    magnitude_prune(model, 0.8, scope)
    for a, (_, m) in zip(first, prunable_layers(model)):
        assert not (m.mask & ~a).any(), "a pruned weight came back"
    if scope == "layer":
        assert [int((~m.mask).sum()) for _, m in prunable_layers(model)] == [
            round(0.8 * m.mask.numel()) for _, m in prunable_layers(model)
        ]


def test_ties_break_by_index():
    model = sparsify(nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2)), keep_last_linear_dense=False)
    with torch.no_grad():
        for _, m in prunable_layers(model):
            m.weight.fill_(0.5)
    magnitude_prune(model, 0.25)  # 5 of 20 and round(2.5) = 2 of 10: the first indices go
    assert (~model[0].mask).flatten().nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert (~model[1].mask).flatten().nonzero().flatten().tolist() == [0, 1]
    again = sparsify(nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2)), keep_last_linear_dense=False)
    with torch.no_grad():
        for _, m in prunable_layers(again):
            m.weight.fill_(0.5)
    magnitude_prune(again, 0.5, "global")  # 15 of 30: all of layer 0 (earlier), then none
    assert not again[0].mask[:3].any() and again[0].mask.sum() == 5 and again[1].mask.all()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"sparsity": 1.0}, ValueError, r"sparsity must be in \[0, 1\), got 1.0"),
        ({"sparsity": -0.1}, ValueError, "sparsity must be in"),
        ({"sparsity": float("nan")}, ValueError, "sparsity must be in"),
        ({"sparsity": "0.5"}, TypeError, "sparsity must be a real number"),
        ({"sparsity": True}, TypeError, "sparsity must be a real number"),
        ({"sparsity": 0.5, "scope": "local"}, ValueError, "scope must be 'layer' or 'global'"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    model = sparsify(build("mlp"))
    with pytest.raises(exc, match=match):
        magnitude_prune(model, **kwargs)


def test_no_masked_layers():
    with pytest.raises(ValueError, match="call ceag.prune.sparsify"):
        magnitude_prune(build("mlp"), 0.5)


# --------------------------------------------------------------------------- training keeps zeros

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
}


def _train(model, opt, x, y, steps, masks_after_step=False):
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y % 3).backward()
        opt.step()
        if masks_after_step:
            apply_masks_(model)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_pruned_weights_stay_zero_through_training(kind, opt_name):
    model = build(kind)
    x, y = data(kind)
    opt = OPTIMIZERS[opt_name](model.parameters())  # built before sparsify: shared Parameters
    _train(model, opt, x, y, 3)  # dense phase: momentum / moments everywhere
    sparsify(model)
    magnitude_prune(model, 0.8, optimizer=opt)
    # mask_optimizer_state_ after pruning is what keeps them at 0: the state must be masked.
    for _, m in prunable_layers(model):
        for v in opt.state[m.weight].values():
            if v.shape == m.weight.shape:
                assert (v[~m.mask] == 0).all()
    before = [m.weight.detach().clone() for _, m in prunable_layers(model)]
    _train(model, opt, x, y, 4)  # no apply_masks_: masked grads + masked state suffice
    for (name, m), w0 in zip(prunable_layers(model), before):
        assert (m.weight[~m.mask] == 0).all(), f"{name}: a pruned weight moved ({opt_name})"
        assert not torch.equal(m.weight[m.mask], w0[m.mask]), "kept weights must train"
    magnitude_prune(model, 0.9, optimizer=opt)  # a second pruning, then apply_masks_ each step
    _train(model, opt, x, y, 3, masks_after_step=True)
    assert all((m.weight[~m.mask] == 0).all() for _, m in prunable_layers(model))


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_without_masking_the_state_pruned_weights_move(opt_name):
    """Negative control: the test above would fail if mask_optimizer_state_ did nothing."""
    model = build("mlp")
    x, y = data("mlp")
    opt = OPTIMIZERS[opt_name](model.parameters())
    _train(model, opt, x, y, 3)
    magnitude_prune(sparsify(model), 0.8)  # no optimizer: momentum left as it was
    _train(model, opt, x, y, 2)
    assert any((m.weight[~m.mask] != 0).any() for _, m in prunable_layers(model))
    apply_masks_(model)  # and apply_masks_ puts them back
    assert all((m.weight[~m.mask] == 0).all() for _, m in prunable_layers(model))


def test_mask_optimizer_state_skips_missing_state():
    model = sparsify(build("mlp"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # no state yet
    magnitude_prune(model, 0.5)
    assert mask_optimizer_state_(opt, model) is opt and len(opt.state) == 0


# --------------------------------------------------------------------------- report, compile


def test_sparsity_report():
    model = sparsify(build("cnn"))
    magnitude_prune(model, 0.75)
    report = sparsity_report(model)
    assert [r.name for r in report] == ["0", "2", "4", "7", "9"]
    assert [r.masked for r in report] == [False, True, True, True, False]
    for r in report:
        w = model.get_submodule(r.name).weight
        assert r.shape == tuple(w.shape) and r.total == w.numel()
        assert r.kept == (r.total - round(0.75 * r.total) if r.masked else r.total)
    masked = [r for r in report if r.masked]
    assert report.masked_overall.sparsity == pytest.approx(sum(r.total - r.kept for r in masked) / sum(r.total for r in masked))
    assert report.overall.total == sum(r.total for r in report)
    df = report.to_pandas()
    assert list(df.columns) == ["name", "type", "shape", "kept", "total", "sparsity", "masked"]
    assert len(df) == 7 and df["name"].iloc[-1] == "(overall)"
    assert math.isclose(df["sparsity"].iloc[1], report[1].sparsity)
    text = str(report)
    assert "MaskedConv2d" in text and "Conv2d (dense)" in text and "(overall)" in text
    assert f"{report.overall.sparsity:.2%}" in text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # emitted inside inductor
def test_compile_fullgraph_sparsified_mlp():
    model = sparsify(build("mlp"))
    magnitude_prune(model, 0.9)
    x, _ = data("mlp", n=5)
    y_eager = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), y_eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage", ["dense", "compact"])
@pytest.mark.parametrize("shape", [(12,), (1, 12, 12)])
def test_unsparsify_gives_the_plain_architecture_with_the_same_outputs(storage, shape):
    from ceag.models import build_model
    from ceag.prune import magnitude_prune, sparsify, unsparsify

    torch.manual_seed(0)
    model = sparsify(build_model(shape, 3, "auto", (16, 16)), storage=storage if len(shape) == 1 else "dense")
    magnitude_prune(model, 0.8)
    plain = unsparsify(model)
    assert not prunable_layers(plain) and prunable_layers(model)  # a copy; the original is untouched
    ref = build_model(shape, 3, "auto", (16, 16))
    ref.load_state_dict(plain.state_dict())  # the original architecture's keys, no masks
    x = torch.randn(7, *shape)
    with torch.no_grad():
        assert torch.allclose(ref.eval()(x), model.eval()(x), atol=1e-6)
