"""The `ceag` command: argument handling, errors, and one tiny end-to-end compare."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ceag.app.cli import build_parser, main

TINY = [
    "--dataset",
    "synthetic",
    "--groups",
    "5",
    "--samples",
    "500",
    "--hidden",
    "16,16",
    "--dense-epochs",
    "1",
    "--pruning-epochs",
    "1",
    "--mitigation-epochs",
    "1",
    "--batch-size",
    "100",
    "--min-count",
    "5",
    "--no-progress",
]


def test_compare_end_to_end(tmp_path, capsys):
    code = main(
        [
            "compare",
            *TINY,
            "--methods",
            "nft,ceag",
            "--seeds",
            "0,1",
            "--sparsity",
            "80%",
            "--output",
            str(tmp_path),
            "--name",
            "cmp",
        ]
    )
    assert code == 0
    out, err = capsys.readouterr()
    assert re.search(r"\| 80% \(80\.\d\d%\) \| NFT \|", out) and re.search(r"\| 80% \(80\.\d\d%\) \| CEAG \|", out), out
    assert "plot:" in out and "results.md" in out
    assert re.search(r"test acc [\d.]+% max ψ -?[\d.]+% \(certified within ε \d+, violate \d+, too small \d+\)", err), err
    saved = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert saved["config"]["seeds"] == [0, 1] and saved["config"]["sparsities"] == [0.8]
    assert saved["config"]["dataset_options"] == {"num_groups": 5, "num_train": 500}
    for line in out.splitlines():
        if line.startswith("plot:"):
            assert (tmp_path / "cmp" / "plots").joinpath(line.split("/")[-1]).is_file()


def test_run_prints_the_worst_groups(tmp_path, capsys):
    assert main(["run", *TINY, "--method", "ceag", "--sparsity", "0.7", "--output", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "worst groups on train" in out and "ψ =" in out
    assert re.search(r"n = (\d+) \(one sample: \d+\.\d points\)", out)
    assert (tmp_path / "synthetic-ceag-s70" / "ceag-s70-seed0" / "metrics.json").is_file()


def test_sweep_defaults():
    args = build_parser().parse_args(["sweep"])
    assert args.sparsities == (0.9, 0.95, 0.99) and args.methods == ("nft", "ceag")
    args = build_parser().parse_args(["compare"])
    assert args.methods == ("nft", "el", "el_rb", "ceag") and args.seeds == (0, 1, 2) and args.sparsity == 0.9


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--dataset", "imagenet"], "dataset must be one of"),
        (["run", "--sparsity", "1.0"], "sparsity must be in [0, 1)"),
        (["run", "--sparsity", "120%"], "sparsity must be in [0, 1)"),
        (["run", "--tolerance", "-0.1"], "tolerance (ε) must be >= 0"),
        (["run", "--method", "fairgrape"], "unknown method 'fairgrape'"),
        (["compare", "--methods", "nft,nft"], "duplicates"),
        (["sweep", "--seeds", "-3"], "seeds"),
        (["run", "--groups", "10"], "--groups applies to --dataset synthetic or your own table (--data) only"),
        (["run", "--buffer-size", "0"], "buffer_size"),
        (["run", "--max-multiplier-sum", "-1"], "max_multiplier_sum must be > 0"),
        (["data", "fetch", "imagenet"], "unknown dataset 'imagenet'"),
        (["data", "fetch", "adult", "mnist"], "unknown dataset 'mnist'"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--output", str(tmp_path)] if argv[0] != "data" else argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_fault_options(tmp_path, capsys):
    from ceag.app.cli.flags import experiment_config

    args = build_parser().parse_args(["run", "--checkpoint-every-steps", "5", "--on-nonfinite", "skip"])
    cfg = experiment_config(args, "run")
    assert (cfg.checkpoint_every_steps, cfg.on_nonfinite) == (5, "skip")
    assert experiment_config(build_parser().parse_args(["run"]), "run").on_nonfinite == "stop"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--on-nonfinite", "ignore"])
    assert exc.value.code == 2 and "--on-nonfinite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "--checkpoint-every-steps", "-1", "--output", str(tmp_path)])
    assert exc.value.code == 2 and "checkpoint_every_steps must be >= 0" in capsys.readouterr().err


def test_unparsable_numbers_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--sparsities", "0.9,lots"])
    assert exc.value.code == 2 and "--sparsities" in capsys.readouterr().err


def test_data_list(capsys, tmp_path):
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "adult" in out and "not fetched" in out and "synthetic" in out and str(tmp_path) in out


def test_missing_data_says_the_fetch_command(capsys, tmp_path, monkeypatch):
    # `run` fetches real data by itself; with fetching impossible it must say how to fetch.
    from ceag.app import data

    def offline(*a, **k):
        raise data.DataNotFoundError("adult is not in the data dir; run: ceag data fetch adult")

    monkeypatch.setattr(data, "fetch", offline)
    with pytest.raises(SystemExit) as exc:
        main(["run", "--dataset", "adult", "--data-dir", str(tmp_path), "--output", str(tmp_path)])
    assert exc.value.code == 2 and "ceag data fetch adult" in capsys.readouterr().err


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "ceag", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "compare" in out.stdout and "sweep" in out.stdout
