"""`ceag audit`: a trained pair of models judged group by group, without training."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from ceag.app.audit import audit, load_model
from ceag.app.cli import main
from ceag.app.experiment import ExperimentConfig, load_data
from ceag.errors import UsageError

SYN = ["--dataset", "synthetic", "--groups", "6", "--samples", "2000", "--hidden", "16,16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished NFT run: its dense-cache entry, its last.ckpt and its metrics."""
    root = tmp_path_factory.mktemp("audit")
    argv = [
        "run",
        *SYN,
        "--method",
        "nft",
        "--dense-epochs",
        "2",
        "--pruning-epochs",
        "2",
        "--mitigation-epochs",
        "1",
        "--min-count",
        "10",
        "--no-progress",
        "--no-plots",
        "--output",
        str(root),
        "--name",
        "r",
    ]
    assert main(argv) == 0
    (dense,) = (root / ".dense-cache").glob("*.ckpt")
    run = root / "r" / "nft-s90-seed0"
    return root, dense, run / "last.ckpt", json.loads((run / "metrics.json").read_text())


def _data():
    return load_data(ExperimentConfig(dataset="synthetic", dataset_options={"num_groups": 6, "num_train": 2000}))


def test_audit_reproduces_the_runs_own_report(trained, tmp_path, capsys):
    root, dense, sparse, metrics = trained
    argv = ["audit", "--dense", str(dense), "--sparse", str(sparse), *SYN, "--min-count", "10", "--output", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "sparse model 90.0% sparse" in out and "certified within ε" in out
    folder = tmp_path / "audit-nft-s90-seed0"
    saved = json.loads((folder / "audit.json").read_text())
    for split in ("train", "test"):
        got = [g["psi"] for g in saved[split]["groups"]]
        want = metrics["psi"][split]
        assert all((math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12 for a, b in zip(got, want)), split
        assert saved[split]["summary"]["max_psi"] == pytest.approx(metrics["summary"][split]["max_psi"], abs=1e-12)
    assert {p.name for p in folder.iterdir()} >= {"audit.md", "audit.json", "group-psi-train.png", "group-psi-test.png"}
    assert "| group | n | dense acc | sparse acc | ψ_g (interval) | verdict |" in (folder / "audit.md").read_text()


def test_torchscript_and_state_dict_files_give_the_same_report(trained, tmp_path):
    _, dense_ckpt, sparse_ckpt, _ = trained
    data = _data()
    kw = dict(hidden=(16, 16))
    dense, sparse = load_model(dense_ckpt, data, **kw), load_model(sparse_ckpt, data, **kw)
    torch.save(dense.state_dict(), tmp_path / "dense.pt")
    torch.save(sparse.state_dict(), tmp_path / "sparse.pt")  # masks as buffers: layers come back masked
    torch.jit.script(dense).save(str(tmp_path / "dense.ts"))
    want = audit(dense, sparse, data, min_count=10)
    for d, s in ((tmp_path / "dense.pt", tmp_path / "sparse.pt"), (tmp_path / "dense.ts", tmp_path / "sparse.pt")):
        got = audit(load_model(d, data, **kw), load_model(s, data, **kw), data, min_count=10)
        for split in want:
            assert torch.equal(got[split].psi.nan_to_num(-9), want[split].psi.nan_to_num(-9))


def test_bad_model_files_are_named(trained, tmp_path, capsys):
    _, dense, sparse, _ = trained
    data = _data()
    with pytest.raises(UsageError, match="does not exist"):
        load_model(tmp_path / "none.pt", data)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UsageError, match="neither TorchScript, a ceag checkpoint nor a state_dict"):
        load_model(tmp_path / "junk.pt", data)
    with pytest.raises(UsageError, match="does not fit --arch auto --hidden 64"):
        load_model(dense, data, hidden=(64,))
    with pytest.raises(SystemExit) as exc:
        main(["audit", "--dense", str(dense), "--sparse", str(sparse), *SYN, "--hidden", "64", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "does not fit --arch auto --hidden 64" in err and "Traceback" not in err


def test_models_that_do_not_fit_the_data_are_refused(tmp_path):
    """A model with the wrong number of outputs was audited as if it fit (issue 24, bad 4); a
    TorchScript model with the wrong input width gave a traceback."""
    from torch import nn

    data = _data()
    width, classes = data.input_shape[0], data.num_classes
    torch.jit.script(nn.Sequential(nn.Linear(width, 5))).save(str(tmp_path / "five.ts"))
    with pytest.raises(
        UsageError, match=rf"five.ts gives outputs of shape \(2, 5\) for 2 samples; the data has {classes} classes"
    ):
        load_model(tmp_path / "five.ts", data)
    torch.jit.script(nn.Sequential(nn.Linear(width + 3, classes))).save(str(tmp_path / "wide.ts"))
    with pytest.raises(UsageError, match=rf"wide.ts does not take this data's inputs \(shape \({width},\) per sample\)"):
        load_model(tmp_path / "wide.ts", data)
    torch.jit.script(nn.Sequential(nn.Linear(width, classes))).save(str(tmp_path / "ok.ts"))
    assert isinstance(load_model(tmp_path / "ok.ts", data), torch.jit.ScriptModule)


def test_audit_of_a_run_folder_needs_no_flags(trained, tmp_path, capsys):
    """`ceag audit RUN_DIR` finds the split, the dense model and ε / min count from the run,
    and gives the run's own paired intervals and verdicts."""
    root, dense, sparse, metrics = trained
    run = sparse.parent
    assert metrics["dense_model"] == dense.name  # the run records the dense model it started from
    assert main(["audit", str(run), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert f"run {run}: seed 0" in out and "measurable" in out
    saved = json.loads((run / "audit" / "audit.json").read_text())
    for split in ("train", "test"):
        groups = saved[split]["groups"]
        assert saved[split]["summary"]["interval"] == "paired"
        assert saved[split]["summary"]["min_count"] == 10  # the run's, not the audit's default
        assert [g["status"] for g in groups] == metrics["groups"][split]["status"]
        for got, want in zip(groups, metrics["groups"][split]["psi_upper"]):
            assert (math.isnan(got["psi_upper"]) and math.isnan(want)) or got["psi_upper"] == pytest.approx(want, abs=1e-12)


def test_audit_of_a_run_folder_names_what_is_missing(trained, tmp_path, capsys):
    root, dense, sparse, _ = trained
    run = sparse.parent
    for argv, message in (
        (["audit", str(tmp_path)], "is not a run of an experiment"),
        (["audit", str(tmp_path / "nope")], "does not exist"),
        (["audit", str(run), "--dataset", "adult"], "drop --dataset"),
        (["audit", "--dense", str(dense)], "give a run folder"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and "Traceback" not in err, (argv, err)
    # The dense model gone from the cache: said, with the way out.
    moved = dense.with_suffix(".moved")
    dense.rename(moved)
    try:
        with pytest.raises(SystemExit):
            main(["audit", str(run)])
        assert "is not in the cache" in capsys.readouterr().err
    finally:
        moved.rename(dense)


@pytest.mark.parametrize("fmt", ["state_dict", "torchscript"])
def test_export_gives_a_plain_model_that_predicts_like_the_run(trained, tmp_path, capsys, fmt):
    """`ceag export RUN_DIR`: the pruned model for code without ceag (weights_only load, no masks)."""
    from ceag.models import build_model

    _, _, sparse, _ = trained
    out = tmp_path / f"model.{fmt}"
    assert main(["export", str(sparse.parent), "--format", fmt, "--output", str(out)]) == 0
    assert f"written: {out}" in capsys.readouterr().out
    data = _data()
    want = load_model(sparse, data, hidden=(16, 16))
    if fmt == "state_dict":
        state = torch.load(out, weights_only=True)
        assert not any(k.endswith(".mask") for k in state)
        model = build_model(data.input_shape, data.num_classes, "auto", (16, 16))
        model.load_state_dict(state)
    else:
        model = torch.jit.load(str(out))
    x = data.test.tensors[0][:64]
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), want(x), atol=1e-6)
    zeros = sum(
        int((p == 0).sum()) for n, p in (state.items() if fmt == "state_dict" else model.state_dict().items()) if "weight" in n
    )
    assert zeros > 0  # pruned weights are exactly 0


def test_export_names_a_bad_run_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path)])
    assert exc.value.code == 2 and "is not a run of an experiment" in capsys.readouterr().err


def test_swapped_table_columns_are_refused_not_scored(tmp_path, capsys, small_table):
    """Issue 24, bad 3: the same rows with two numeric columns swapped were re-encoded in the
    new order and scored (49% for a 99% model). The dense-cache entry records its columns."""
    make, table_args = small_table
    table = make(tmp_path / "t.csv")
    assert (
        main(["run", "--data", str(table), *table_args, "--method", "nft", "--output", str(tmp_path / "runs"), "--name", "x"])
        == 0
    )
    (dense,) = (tmp_path / "runs" / ".dense-cache").glob("*.ckpt")
    sparse = tmp_path / "runs" / "x" / "nft-s90-seed0" / "last.ckpt"
    audit_args = ["audit", "--dense", str(dense), "--sparse", str(sparse), *table_args[:4], "--hidden", "8", "--no-plots"]
    assert main([*audit_args, "--data", str(table), "--output", str(tmp_path / "a")]) == 0
    swapped = make(tmp_path / "swapped.csv", swap=True)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*audit_args, "--data", str(swapped), "--output", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "trained on other encoded columns" in err and "input 0 was 'x1', now 'x2'" in err


def test_hostile_audit_flags_and_files_are_named(trained, tmp_path, capsys):
    """Issue 24, ugly: ε and confidence out of range blamed on the models; a crafted file's
    refusal repeating torch's advice to load with weights_only=False; "Ψ_PW /a"; a plain
    model with half its weights zero reported "0.0% sparse"."""
    from torch import nn

    from ceag.app.audit import sparsity_of

    root, dense, sparse, _ = trained
    base = [
        "audit",
        "--dense",
        str(dense),
        "--sparse",
        str(sparse),
        *SYN,
        "--min-count",
        "10",
        "--output",
        str(tmp_path),
        "--no-plots",
    ]
    for flag, value, message in (
        ("--tolerance", "1e9", "--tolerance .* in \\[0, 1\\)"),
        ("--tolerance", "inf", "--tolerance .* in \\[0, 1\\)"),
        ("--confidence", "1.5", "--confidence must be in \\(0, 1\\)"),
        ("--confidence", "0", "--confidence must be in \\(0, 1\\)"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([*base, flag, value])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and re.search(message, err) and "models" not in err, (flag, value, err)

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Payload()}, tmp_path / "crafted.pt")
    with pytest.raises(UsageError) as info:
        load_model(tmp_path / "crafted.pt", _data())
    assert "weights_only" not in str(info.value) and "it names print" in str(info.value)

    layer = nn.Linear(4, 4)
    with torch.no_grad():
        layer.weight[:2] = 0
    assert sparsity_of(nn.Sequential(layer)) == (0.5, "zero weights")
    assert sparsity_of(load_model(sparse, _data(), hidden=(16, 16)))[1] == "masked layers"
    assert main(base) == 0
    assert "Ψ_PW /a" not in capsys.readouterr().out


def test_a_compact_run_is_audited(tmp_path, capsys):
    """A --storage compact run's last.ckpt was refused ("does not fit")."""
    argv = [
        "run",
        *SYN,
        "--method",
        "nft",
        "--dense-epochs",
        "1",
        "--pruning-epochs",
        "1",
        "--mitigation-epochs",
        "1",
        "--min-count",
        "10",
        "--storage",
        "compact",
        "--no-progress",
        "--no-plots",
        "--output",
        str(tmp_path),
        "--name",
        "c",
    ]
    assert main(argv) == 0
    assert main(["audit", str(tmp_path / "c" / "nft-s90-seed0"), "--no-plots"]) == 0
    assert "certified within ε" in capsys.readouterr().out
