"""One configuration source: the command line is generated from the config dataclasses, and
the experiment passes its training fields on to TrainConfig without copying them by hand."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from ceag._options import add_flags, comma_list, flag_of, option, passed_on, same_as
from ceag.app.cli import build_parser
from ceag.app.experiment import ExperimentConfig
from ceag.train import TrainConfig

FLAGGED = [f for f in dataclasses.fields(ExperimentConfig) if "group" in f.metadata]


def _run_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["run", *argv])


def test_the_command_line_defaults_are_the_config_defaults():
    args, cfg = _run_args([]), ExperimentConfig()
    assert FLAGGED, "no generated flags"
    for f in FLAGGED:
        assert getattr(args, f.name) == getattr(cfg, f.name), f.name


@pytest.mark.parametrize("name", [f.name for f in FLAGGED])
def test_every_flag_has_the_fields_help_and_sets_it(name):
    f = {f.name: f for f in FLAGGED}[name]
    flag = flag_of(ExperimentConfig, name)
    (action,) = [a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions if flag in a.option_strings]
    assert action.dest == name and f.metadata["help"].replace("%", "%%") in action.help
    default = getattr(ExperimentConfig(), name)
    if isinstance(default, bool):
        assert getattr(_run_args([flag]), name) is (not default)
    elif "choices" in f.metadata:
        other = next(c for c in f.metadata["choices"] if c != default)
        assert getattr(_run_args([flag, other]), name) == other


def test_shared_fields_take_the_training_help_and_are_passed_on():
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    shared = [f for f in dataclasses.fields(ExperimentConfig) if "same_as" in f.metadata]
    assert len(shared) >= 15
    for f in shared:
        source = train_fields[f.metadata["same_as"]]
        if f.name != "progress":  # shown as its switch, --no-progress
            assert f.metadata["help"] == source.metadata["help"], f.name
    # A non-default value of every passed-on field reaches the run's TrainConfig.
    changed = {
        "tolerance": 0.03,
        "constrain_min_count": 5,
        "pruning_epochs": 3,
        "mitigation_epochs": 7,
        "lr": 0.05,
        "momentum": 0.5,
        "weight_decay": 0.0,
        "batch_size": 17,
        "eval_batch_size": 33,
        "pruning_scope": "global",
        "min_count": 11,
        "progress": False,
        "checkpoint_every_steps": 9,
        "on_nonfinite": "skip",
        "storage": "compact",
        "dual_lr_unit": "step",
    }
    on = {f.name for f in shared if f.metadata["passed_on"]}
    assert on == set(changed) | {"device"}
    run = ExperimentConfig(**changed).train_config("ceag", 0.9, 0, num_groups=4)
    for name, value in changed.items():
        assert getattr(run, name) == value, name


def test_transformed_fields_are_computed_per_run():
    cfg = ExperimentConfig(dual_optimizer="pi", buffer_size=7)
    assert cfg.train_config("ceag", 0.9, 0, num_groups=8).dual_lr == pytest.approx(1.0)
    assert cfg.train_config("ceag_batch", 0.9, 0, num_groups=8).buffer_size is None
    assert cfg.train_config("ceag", 0.9, 0, num_groups=8).buffer_size == 7
    assert cfg.train_config("el", 0.9, 0, num_groups=8).dual_optimizer == "sgd"  # the formulation is CEAG's


def test_option_helpers_on_a_toy_config():
    @dataclasses.dataclass
    class Base:
        width: int = option(3, help="how wide")

    @dataclasses.dataclass
    class Toy:
        width: int = same_as(Base, "width", 5, group="shape", flags=("--w",))
        names: tuple[str, ...] = option(("a",), help="names", group="shape", parse=comma_list(str))
        hidden: int = option(1, help="not a flag")

    parser = argparse.ArgumentParser()
    add_flags(parser, Toy, {})
    args = parser.parse_args(["--w", "8", "--names", "x, y"])
    assert (args.width, args.names) == (8, ("x", "y")) and not hasattr(args, "hidden")
    assert parser.parse_args([]).width == 5
    assert passed_on(Toy(width=9)) == {"width": 9}
    assert flag_of(Toy, "width") == "--w" and flag_of(Toy, "hidden") is None
    with pytest.raises(argparse.ArgumentTypeError, match="bad list"):
        comma_list(int)("1,x")


def test_a_bad_value_names_its_generated_flag(capsys):
    from ceag.app.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "--dataset", "synthetic", "--momentum", "1.5", "--no-progress"])
    assert exit_.value.code == 2
    assert "ceag: error: --momentum: TrainConfig.momentum must be < 1.0" in capsys.readouterr().err
