"""ceag.methods.registry: one list of methods that building, configs, tables and figures share."""

from __future__ import annotations

import pytest
import torch

from ceag import train
from ceag.app import experiment, plots
from ceag.app.cli import build_parser
from ceag.methods import CEAG, ELRB, METHODS, ConstrainedMethod, Method, MethodSpec, build_method
from ceag.metrics import GroupStats

G = 4


def _dense() -> GroupStats:
    count = torch.tensor([50, 30, 15, 5])
    return GroupStats(count, count * 3 // 4, count.double() * 0.5)


def test_names_and_labels_are_today_s():
    assert tuple(METHODS) == ("nft", "el", "el_rb", "ceag", "ceag_paper", "ceag_batch")
    assert {n: s.label for n, s in METHODS.items()} == {
        "nft": "NFT",
        "el": "EL",
        "el_rb": "EL+RB",
        "ceag": "CEAG",
        "ceag_paper": "CEAG-paper",
        "ceag_batch": "CEAG (no buffers)",
    }
    assert {n: s.plot_label for n, s in METHODS.items()} == {
        "nft": "NFT",
        "el": "EL",
        "el_rb": "EL+RB",
        "ceag": "CEAG",
        "ceag_paper": "CEAG-paper",
        "ceag_batch": "CEAG-batch",
    }


def test_entries_are_consistent():
    for name, spec in METHODS.items():
        assert isinstance(spec, MethodSpec) and spec.name == name
    for field in ("label", "plot_label"):
        values = [getattr(s, field) for s in METHODS.values()]
        assert len(set(values)) == len(values), field
    styles = [(s.color, s.marker) for s in METHODS.values()]
    assert len(set(s.color for s in METHODS.values())) == len(styles)
    assert len(set(s.marker for s in METHODS.values())) == len(styles)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_entry_builds_what_it_says(name):
    spec = METHODS[name]
    method = build_method(name, G, dense=_dense())
    assert isinstance(method, Method) and method.num_groups == G
    assert isinstance(method, ConstrainedMethod) == spec.constrained
    assert getattr(method, "uses_buffers", False) == spec.uses_buffers
    assert isinstance(method, CEAG) == spec.needs_dense
    if spec.needs_dense:
        with pytest.raises(ValueError, match=f"method '{name}' needs dense"):
            build_method(name, G)
    else:
        kwargs = {"group_shares": _dense().shares} if name == "el_rb" else {}
        assert type(build_method(name, G, **kwargs)) is type(method)


def test_train_experiment_plots_and_cli_read_the_registry():
    assert train.METHOD_NAMES == tuple(METHODS)
    assert experiment.METHOD_LABELS == {n: s.label for n, s in METHODS.items()}
    for name, spec in METHODS.items():
        style = plots.method_style(name)
        assert (style["label"], style["color"], style["marker"]) == (spec.plot_label, spec.color, spec.marker)
        assert plots.method_style(spec.plot_label) == style
    run_parser = next(a for a in build_parser()._actions if a.choices and "run" in a.choices).choices["run"]
    for name in METHODS:
        assert name in run_parser.format_help()


@pytest.mark.parametrize("name", ["bogus", "NFT", "", ["ceag"], None])
def test_unknown_name_error_names_the_argument(name):
    with pytest.raises(ValueError, match=r"^name must be one of nft, el, el_rb, ceag, ceag_paper, ceag_batch; got "):
        build_method(name, G, dense=_dense())  # type: ignore[arg-type]


def test_builder_rules_kept():
    with pytest.raises(ValueError, match="method 'ceag_batch' has no replay buffers: buffer_size must be None, got 40"):
        build_method("ceag_batch", G, dense=_dense(), buffer_size=40)
    assert build_method("ceag_batch", G, dense=_dense(), buffer_size=None).buffer_size is None
    assert build_method("ceag", G, dense=_dense()).buffer_size == 40
    with pytest.raises(ValueError, match="method 'el_rb' needs group_shares or dense"):
        build_method("el_rb", G)
    shares = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    method = build_method("el_rb", G, dense=_dense(), group_shares=shares)
    assert isinstance(method, ELRB)
    torch.testing.assert_close(method._shares, shares)  # group_shares wins over dense.shares
    torch.testing.assert_close(build_method("el_rb", G, dense=_dense())._shares, _dense().shares.double())


def test_ceag_paper_is_the_paper_formulation_and_ceag_departs_from_it():
    paper = build_method("ceag_paper", G, dense=_dense())
    ours = build_method("ceag", G, dense=_dense())
    assert (paper.primal, paper.multiplier_scale, paper.margin) == ("paper", "absolute", 0.0)
    assert type(paper.dual_optimizer) is torch.optim.SGD
    assert ours.primal == "positive"
    with pytest.raises(ValueError, match="ceag_paper.*primal must be 'paper'"):
        build_method("ceag_paper", G, dense=_dense(), primal="positive")
    with pytest.raises(ValueError, match="ceag_paper.*dual_optimizer must be 'sgd'"):
        build_method("ceag_paper", G, dense=_dense(), dual_optimizer="pi")
