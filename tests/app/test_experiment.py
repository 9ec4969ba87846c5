"""ceag.app.experiment: the grid runner behind `ceag run/compare/sweep` (synthetic data, tiny model)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from ceag.app import experiment
from ceag.app.experiment import ExperimentConfig, run_experiment
from ceag.app.experiment.runner import constraint_note

SYNTH = {"num_groups": 6, "num_train": 600, "num_test": 300, "num_features": 8, "minority_effect": 1.0, "seed": 3}


def _cfg(tmp_path, **kw) -> ExperimentConfig:
    base = dict(
        dataset="synthetic",
        dataset_options=SYNTH,
        hidden=(32, 32),
        dense_epochs=2,
        methods=("nft", "ceag"),
        sparsities=(0.8,),
        seeds=(0, 1),
        pruning_epochs=1,
        mitigation_epochs=2,
        batch_size=100,
        min_count=5,
        dual_lr=1e-2,
        output_root=str(tmp_path),
        progress=False,
    )
    base.update(kw)
    return ExperimentConfig(**base)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    cfg = _cfg(tmp, sparsities=(0.5, 0.8), name="grid")
    return cfg, run_experiment(cfg, log=lambda _: None)


def test_files_table_and_plots(finished):
    cfg, result = finished
    out = cfg.output_dir
    assert json.loads((out / "config.json").read_text())["methods"] == ["nft", "ceag"]
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 2 * 2 * 2 and len(saved["rows"]) == 2 * 2
    for r in result.runs:
        run = out / experiment.run_dir_name(r.method, r.sparsity, r.seed)
        for f in ("metrics.json", "history.json", "history.csv", "last.ckpt"):
            assert (run / f).is_file(), run / f
    md = (out / "results.md").read_text()
    assert re.search(r"\| 50% \(50\.\d\d%\) \| NFT \|", md) and re.search(r"\| 80% \(80\.\d\d%\) \| CEAG \|", md), md
    assert "plots/" in md
    # The bold note only where a cell is bold; the verdict columns are there per split.
    table = md.split("**Bold**")[0]
    assert ("**Bold** max ψ" in md) == ("**" in table.split("| ms/step |")[-1])
    assert "test within / violate / too small" in md and "train max ψ measurable" in md
    names = {p.name for p in result.plots}
    # Fig. 1 and 3 per split and sparsity, Fig. 4 for CEAG per sparsity, Fig. 2 per split.
    assert {"group_psi-train-s80.png", "psi_over_training-test-s50.png", "multipliers-ceag-s80.png", "tradeoff-test.png"} <= names
    assert not any("multipliers-nft" in n for n in names)
    for p in result.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_are_means_over_seeds(finished):
    _, result = finished
    for row in result.rows():
        runs = [r for r in result.runs if r.method == row["method"] and r.sparsity == row["sparsity"]]
        assert row["seeds"] == 2
        vals = [r.summary["train"]["accuracy"] for r in runs]
        assert row["train_accuracy"] == pytest.approx(sum(vals) / 2)
        assert row["train_accuracy_std"] == pytest.approx(abs(vals[0] - vals[1]) / math.sqrt(2))
        # The table's max ψ is the runs' own final disparity, the same number the history ends with.
        for r in runs:
            assert r.summary["train"]["max_psi"] == pytest.approx(r.history[-1]["train_max_psi"])


def test_methods_start_from_the_same_dense_model(finished):
    _, result = finished
    for seed in (0, 1):
        dense = {r.summary["train"]["dense_accuracy"] for r in result.runs if r.seed == seed}
        assert len(dense) == 1
    # ...and different seeds train different dense models.
    assert len({r.summary["train"]["dense_accuracy"] for r in result.runs}) == 2


def test_rerun_reads_finished_runs_without_training(finished, monkeypatch):
    cfg, result = finished

    def boom(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(experiment.runner, "dense_model", boom)
    monkeypatch.setattr(experiment.runner.Trainer, "fit", boom)
    again = run_experiment(cfg, log=lambda _: None, plots=False)
    assert again.table() == result.table()


def test_interrupted_run_finishes_with_the_same_result(tmp_path, finished):
    cfg, result = finished
    # A run whose metrics were never written (killed after its last checkpoint) is completed
    # from the checkpoint and reports the same numbers.
    r0 = result.runs[0]
    run = cfg.output_dir / experiment.run_dir_name(r0.method, r0.sparsity, r0.seed)
    saved = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    again = run_experiment(cfg, log=lambda _: None, plots=False)
    got = next(r for r in again.runs if (r.method, r.sparsity, r.seed) == (r0.method, r0.sparsity, r0.seed))
    want = experiment.RunResult.from_dict(saved)
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 - NaN == NaN
    assert same(got.summary, want.summary) and same(got.psi, want.psi) and same(got.groups, want.groups)


def test_result_files_are_strict_json(finished):
    """NaN (no ψ before pruning, no measurable group) is written as null: strict readers
    (JavaScript, jq) reject Python's NaN. Reading the files back gives NaN again."""
    cfg, result = finished

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    files = [cfg.output_dir / "results.json", *cfg.output_dir.glob("*/metrics.json"), *cfg.output_dir.glob("*/history.json")]
    assert len(files) > 2
    for f in files:
        strict(f.read_text())
    metrics = next(cfg.output_dir.glob("*/metrics.json"))
    assert "null" in (metrics.parent / "history.json").read_text()  # the dense-free epochs' ψ
    run = experiment.RunResult.from_dict(strict(metrics.read_text()))
    assert math.isnan(run.history[0]["train_max_psi"]) or run.history[0]["phase"] != "dense"


def test_dense_cache_is_shared_and_keyed(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, methods=("nft",), seeds=(0,), name="a")
    run_experiment(cfg, log=lambda _: None, plots=False)
    cached = list((tmp_path / ".dense-cache").glob("*.ckpt"))
    assert len(cached) == 1
    trained = []
    real = torch.optim.Adam

    def spy(*a, **k):
        trained.append(1)
        return real(*a, **k)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    run_experiment(_cfg(tmp_path, methods=("ceag",), seeds=(0,), name="b"), log=lambda _: None, plots=False)
    assert not trained  # same dense config: loaded from the cache
    run_experiment(_cfg(tmp_path, methods=("ceag",), seeds=(0,), name="c", dense_lr=2e-3), log=lambda _: None, plots=False)
    assert trained  # another dense config: trained anew
    assert len(list((tmp_path / ".dense-cache").glob("*.ckpt"))) == 2


def test_corrupt_dense_cache_is_rebuilt(tmp_path):
    cfg = _cfg(tmp_path, methods=("nft",), seeds=(0,), name="a")
    first = run_experiment(cfg, log=lambda _: None, plots=False)
    (ckpt,) = (tmp_path / ".dense-cache").glob("*.ckpt")
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    logs = []
    second = run_experiment(_cfg(tmp_path, methods=("nft",), seeds=(0,), name="b"), log=logs.append, plots=False)
    assert any("ignoring unusable cache" in m for m in logs)
    assert second.runs[0].summary == first.runs[0].summary


def test_folder_of_another_config_is_refused(tmp_path):
    run_experiment(_cfg(tmp_path, methods=("nft",), seeds=(0,), name="x"), log=lambda _: None, plots=False)
    with pytest.raises(ValueError, match="different config.*tolerance"):
        run_experiment(_cfg(tmp_path, methods=("nft",), seeds=(0,), name="x", tolerance=0.05), log=lambda _: None)
    # Growing the grid is allowed.
    run_experiment(_cfg(tmp_path, methods=("nft",), seeds=(0, 1), name="x"), log=lambda _: None, plots=False)


def test_a_folder_from_before_a_new_field_reads_as_the_value_it_ran_with(tmp_path):
    cfg = _cfg(tmp_path, methods=("nft",), seeds=(0,), name="x", dual_lr_unit="step")
    run_experiment(cfg, log=lambda _: None, plots=False)
    path = cfg.output_dir / "config.json"
    saved = json.loads(path.read_text())
    for field in ("val_fraction", "dual_decay", "dual_lr_unit"):  # written before these fields existed
        del saved[field]
    path.write_text(json.dumps(saved))
    run_experiment(cfg, log=lambda _: None, plots=False)  # the values it ran with: the same experiment
    path.write_text(json.dumps(saved))
    # Today's default dual_lr_unit ("pass") is not what such a folder ran with ("step").
    with pytest.raises(ValueError, match="different config.*dual_lr_unit"):
        run_experiment(_cfg(tmp_path, methods=("nft",), seeds=(0,), name="x"), log=lambda _: None)
    with pytest.raises(ValueError, match="different config.*val_fraction"):
        run_experiment(
            _cfg(tmp_path, methods=("nft",), seeds=(0,), name="x", dual_lr_unit="step", val_fraction=0.2),
            log=lambda _: None,
        )


def test_val_fraction_holds_out_every_groups_share(tmp_path):
    from ceag.app.experiment.runner import hold_out, load_data

    data = load_data(_cfg(tmp_path))
    held = hold_out(data, 0.25)
    g_all, g_val, g_fit = data.train.tensors[2], held.val.tensors[2], held.train.tensors[2]
    counts = torch.bincount(g_all, minlength=data.num_groups)
    assert torch.equal(torch.bincount(g_val, minlength=data.num_groups), torch.round(counts.double() * 0.25).long())
    assert len(g_val) + len(g_fit) == len(g_all)
    assert torch.equal(hold_out(data, 0.25).val.tensors[0], held.val.tensors[0])  # the same rows every time
    # No row is in both: the held-out rows are not among the fitted ones.
    fit_rows = {tuple(r) for r in held.train.tensors[0][:, :4].tolist()}
    assert not any(tuple(r) in fit_rows for r in held.val.tensors[0][:, :4].tolist())


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"dataset": "mnist"}, "dataset must be one of"),
        ({"val_fraction": 0.6}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"sparsities": (1.0,)}, r"sparsity must be in \[0, 1\)"),
        ({"sparsities": (-0.1,)}, r"sparsity must be in \[0, 1\)"),
        ({"sparsities": (float("nan"),)}, r"sparsity must be in \[0, 1\)"),
        ({"sparsities": ()}, "sparsities"),
        ({"tolerance": -0.01}, "tolerance"),
        ({"methods": ("ceag", "magic")}, "unknown method 'magic'"),
        ({"methods": ()}, "methods"),
        ({"methods": ("nft", "nft")}, "duplicates"),
        ({"seeds": (-1,)}, "seeds"),
        ({"seeds": ()}, "seeds"),
        ({"dense_epochs": -1}, "dense_epochs"),
        ({"dense_lr": 0.0}, "dense_lr"),
        ({"dense_optimizer": "lbfgs"}, "dense_optimizer"),
        ({"arch": "resnet"}, "arch"),
        ({"hidden": (0,)}, "hidden"),
        ({"name": "a/b"}, "name"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"dual_lr": -1.0}, "dual_lr"),
        ({"max_multiplier_sum": 0.0}, "max_multiplier_sum"),
        ({"constrain_min_count": -1}, "constrain_min_count"),
        ({"max_multiplier_sum": float("nan")}, "max_multiplier_sum"),
        ({"batch_size": 0}, "batch_size"),
        ({"min_count": 0}, "min_count"),
        ({"pruning_scope": "row"}, "pruning_scope"),
        ({"checkpoint_every_steps": -1}, "checkpoint_every_steps"),
        ({"on_nonfinite": "ignore"}, "on_nonfinite"),
    ],
)
def test_config_validation_names_the_field(tmp_path, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _cfg(tmp_path, **kw)


def test_max_multiplier_sum_reaches_constrained_methods_only(tmp_path):
    cfg = _cfg(tmp_path, methods=("nft", "ceag"), max_multiplier_sum=0.5)
    assert cfg.train_config("ceag", 0.9, 0, num_groups=3).method_kwargs()["max_multiplier_sum"] == 0.5
    assert "max_multiplier_sum" not in cfg.train_config("nft", 0.9, 0, num_groups=3).method_kwargs()
    assert "max_multiplier_sum" not in _cfg(tmp_path).train_config("ceag", 0.9, 0, num_groups=3).method_kwargs()
    assert _cfg(tmp_path, constrain_min_count=30).train_config("ceag", 0.9, 0, num_groups=3).constrain_min_count == 30


def test_dual_lr_defaults_to_one_per_pass(tmp_path):
    cfg = _cfg(tmp_path, dual_lr=None, batch_size=256)
    run = cfg.train_config("ceag", 0.9, 0, num_groups=40)
    assert (run.dual_lr, run.dual_lr_unit) == (pytest.approx(1.0), "pass")
    # Per step: the same movement per pass on 1,000 rows (4 steps) as on 32,561 (128 steps).
    assert run.method_kwargs(run.steps_per_epoch(1000))["dual_lr"] == pytest.approx(1 / 4)
    assert run.method_kwargs(run.steps_per_epoch(32561))["dual_lr"] == pytest.approx(1 / 128)
    assert cfg.train_config("ceag", 0.9, 0, num_groups=400).dual_lr == pytest.approx(1.0)  # any G
    assert "η_λ = 1 per pass" in cfg.header(400)
    assert "η_λ = 1 per pass (0.00781 per step)" in cfg.header(40, num_train=32561)
    # The per-step rule of sessions 4-6, on request: 0.4 / G per step.
    old = _cfg(tmp_path, dual_lr=None, dual_lr_unit="step").train_config("ceag", 0.9, 0, num_groups=40)
    assert old.method_kwargs(old.steps_per_epoch(10**6))["dual_lr"] == pytest.approx(0.01)
    fixed = _cfg(tmp_path, dual_lr=0.05, dual_lr_unit="step").train_config("ceag", 0.9, 0, num_groups=400)
    assert fixed.method_kwargs(fixed.steps_per_epoch(10**6))["dual_lr"] == 0.05
    assert "η_λ = 0.05 per step" in _cfg(tmp_path, dual_lr=0.05, dual_lr_unit="step").header(400)


def test_constrained_groups_default_to_the_reported_ones(tmp_path):
    cfg = _cfg(tmp_path, min_count=30)
    assert cfg.train_config("ceag", 0.9, 0, num_groups=3).constrained_min_count == 30
    assert _cfg(tmp_path, constrain_min_count=0).train_config("ceag", 0.9, 0, num_groups=3).constrained_min_count == 0
    counts = torch.tensor([0, 5, 29, 30, 500])
    assert constraint_note(counts, cfg) == (
        "constraints: 2 groups with >= 30 training samples are constrained (the groups the report judges); "
        "the other 2 keep λ = 0 (--constrain-min-count; 0 constrains every group)"
    )
    every = _cfg(tmp_path, constrain_min_count=0)
    assert constraint_note(counts, every) == "constraints: all 4 groups with training samples are constrained"


def test_config_round_trips(tmp_path):
    cfg = _cfg(tmp_path)
    assert ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown fields"):
        ExperimentConfig.from_dict({**cfg.to_dict(), "epochs": 3})


def test_fault_options_reach_the_runs_and_may_change_on_a_rerun(tmp_path):
    cfg = _cfg(tmp_path, methods=("nft",), seeds=(0,), name="f", checkpoint_every_steps=2)
    tcfg = cfg.train_config("nft", 0.8, 0, num_groups=6)
    assert (tcfg.checkpoint_every_steps, tcfg.on_nonfinite) == (2, "stop")
    run_experiment(cfg, log=lambda _: None, plots=False)
    run = cfg.output_dir / experiment.run_dir_name("nft", 0.8, 0)
    assert (run / "prev.ckpt").is_file()  # the checkpoint before last.ckpt is kept
    # Neither option changes a result: the finished experiment is re-read with others.
    again = _cfg(tmp_path, methods=("nft",), seeds=(0,), name="f", on_nonfinite="skip")
    assert run_experiment(again, log=lambda _: None, plots=False).runs[0].history[-1]["skipped_steps"] == 0


def test_formulation_fields_reach_ceag_only():
    """primal / multiplier_scale / dual_* set "ceag" and "ceag_batch"; "ceag_paper" and EL keep theirs."""
    from ceag.app.experiment import ExperimentConfig
    from ceag.methods import PI, build_method
    from ceag.metrics import GroupStats

    cfg = ExperimentConfig(methods=("nft", "el_rb", "ceag_paper", "ceag"), primal="normalized", dual_optimizer="pi", dual_kp=2.0)
    ceag = cfg.train_config("ceag", 0.9, 0, num_groups=3)
    assert ceag.dual_optimizer == "pi"
    assert ceag.method_options == {
        "primal": "normalized",
        "multiplier_scale": "absolute",
        "margin": cfg.margin,
        "dual_optimizer_kwargs": {"Kp": 2.0, "Ki": 1.0},
    }
    for other in ("ceag_paper", "el_rb"):
        tc = cfg.train_config(other, 0.9, 0, num_groups=3)
        assert tc.dual_optimizer == "sgd" and tc.method_options == {}
    dense = GroupStats(torch.tensor([10, 20, 30]), torch.tensor([8, 15, 25]), torch.tensor([3.0, 6.0, 9.0], dtype=torch.float64))
    method = build_method("ceag", 3, dense=dense, **ceag.method_kwargs())
    assert method.primal == "normalized" and isinstance(method.dual_optimizer, PI)
    assert method.dual_optimizer.param_groups[0]["Kp"] == 2.0
    for bad in ({"primal": "dual"}, {"multiplier_scale": "log"}, {"dual_optimizer": "adam"}, {"dual_kp": -1.0}, {"margin": 2.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ExperimentConfig(**bad)


def test_train_samples_is_a_fixed_subset_of_the_training_split(tmp_path):
    full = experiment.load_data(_cfg(tmp_path))
    cfg = _cfg(tmp_path, train_samples=300)
    a, b = experiment.load_data(cfg), experiment.load_data(cfg)
    assert len(a.train) == 300 and len(a.test) == len(full.test)
    for ta, tb in zip(a.train.tensors, b.train.tensors):
        assert torch.equal(ta, tb)  # the same images for every run
    rows = {tuple(x.tolist()) for x in full.train.tensors[0]}
    assert all(tuple(x.tolist()) in rows for x in a.train.tensors[0])
    with pytest.raises(ValueError, match="train_samples"):
        experiment.load_data(_cfg(tmp_path, train_samples=10**9))
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="train_samples"):
            _cfg(tmp_path, train_samples=bad)
    result = run_experiment(_cfg(tmp_path, train_samples=300, methods=("nft",), seeds=(0,)), log=lambda m: None, plots=False)
    assert sum(result.runs[0].count["train"]) == 300


def test_resolution_note_names_the_coarse_groups():
    note = experiment.resolution_note(torch.tensor([5, 33, 47, 120, 3000]), 0.01, 30)
    assert note.startswith("note: 2 of the 4 groups with >= 30 training samples have fewer than 1/ε = 100")
    assert "3.0 points at n = 33" in note
    assert experiment.resolution_note(torch.tensor([5, 300, 470]), 0.01, 30) == ""  # the group of 5 is not reported
    assert experiment.resolution_note(torch.tensor([33, 300]), 0.0, 30) == ""
    assert "1 of the 2" in experiment.resolution_note(torch.tensor([33, 300]), 0.01, 30)


def test_one_seed_plots_draw_the_runs_intervals(finished, monkeypatch, tmp_path):
    """With one run per method the per-group plot gets its paired intervals (verdict colours);
    bars that are means over seeds get none."""
    import dataclasses

    from ceag.app import plots

    cfg, result = finished
    seen = []
    monkeypatch.setattr(plots, "group_gap_bars", lambda psi, eps, path, **kw: seen.append(kw.get("intervals")) or path)
    for other in ("disparity_over_training", "multiplier_trajectories", "tradeoff"):  # not the point here
        monkeypatch.setattr(plots, other, lambda *a, **k: Path("x.png"))
    one = dataclasses.replace(result, runs=[r for r in result.runs if r.seed == 0], output_dir=tmp_path)
    experiment.write_plots(one)
    assert seen and all(iv is not None and set(iv) == {"NFT", "CEAG"} for iv in seen)
    seen.clear()
    experiment.write_plots(dataclasses.replace(result, output_dir=tmp_path))
    assert seen and all(iv is None for iv in seen)


def test_a_folder_refuses_runs_on_changed_data(tmp_path, capsys, small_table):
    """Issue 24, bad 1: after the table changed, a new method ran on the new rows while the old
    method's run was printed "(cached)" and put in the same table. The folder records its data."""
    from ceag.app.cli import main

    make, table_args = small_table
    table = make(tmp_path / "t.csv")
    args = ["run", "--data", str(table), *table_args, "--output", str(tmp_path / "runs"), "--name", "x"]
    assert main([*args, "--method", "nft"]) == 0
    record = json.loads((tmp_path / "runs" / "x" / "data.json").read_text())
    assert record["samples"]["train"] + record["samples"]["test"] == 300 and record["feature_names"] == ["x1", "x2", "g=a", "g=b"]
    assert main([*args, "--method", "ceag"]) == 0  # same data: the folder grows
    make(table, n=200, seed=1)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*args, "--method", "el"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "ran on other data: the files of t have changed since" in err and "--name" in err
    assert not (tmp_path / "runs" / "x" / "el-s90-seed0").exists()
    # ... and its audit would judge the models on rows they were not trained on.
    with pytest.raises(SystemExit) as exc:
        main(["audit", str(tmp_path / "runs" / "x" / "nft-s90-seed0"), "--no-plots"])
    assert exc.value.code == 2 and "ran on other data" in capsys.readouterr().err


def test_torchrun_with_compact_storage_is_refused_before_any_file(tmp_path, monkeypatch):
    """Issue 24, ugly: each rank gave a traceback and config.json was left behind, so the
    suggested --storage dense was then refused ("storage differ")."""
    from ceag.app.experiment import runner
    from ceag.errors import UsageError

    monkeypatch.setattr(runner, "rank_and_world", lambda: (0, 2))
    with pytest.raises(UsageError, match="--storage compact .* use --storage dense with torchrun"):
        run_experiment(_cfg(tmp_path, storage="compact", name="t"), log=lambda _: None, plots=False)
    assert not (tmp_path / "t").exists() and not _cfg(tmp_path, name="t").output_dir.exists()


def test_a_dangling_link_as_the_run_folder_is_named(tmp_path):
    """--name pointing at a dangling symlink said "is not writable: File exists"."""
    from ceag._io import OutputError

    cfg = _cfg(tmp_path, name="gone")
    cfg.output_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg.output_dir.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="is a link to .*nowhere, which does not exist"):
        run_experiment(cfg, log=lambda _: None, plots=False)
