"""The adversarial pass over the CLI and API (issue 12): each case reproduces one finding.

Every test here failed before its fix; docs/reliability.md ("Adversarial pass") lists them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from ceag._io import LOCK_NAME, FolderInUseError, atomic_write, lock
from ceag.app import experiment as exp
from ceag.app.cli import main
from ceag.app.experiment import ExperimentConfig, dense_model
from ceag.errors import UsageError
from ceag.nn import MaskedLinear
from ceag.prune import sparsity_report
from ceag.train import CheckpointError, TrainConfig, Trainer, load_checkpoint, save_checkpoint

# Tiny synthetic experiment: ~2 s after start-up.
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
    "--no-plots",
]


def _exit_2(capsys, argv: list[str]) -> str:
    """The CLI exits 2 with one line ``ceag: error: ...`` and no traceback; returns that line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("ceag: error: "), err
    return lines[-1]


@contextlib.contextmanager
def _held_by_another_process(path: Path, seconds: float = 60):
    """A child process holds :func:`ceag._io.lock` on ``path`` for ``seconds``; yields it."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from ceag._io import lock\n"
            f"with lock({str(path)!r}, what='x'):\n print('held', flush=True); time.sleep({seconds})",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


# -- 1. code execution from a checkpoint ---------------------------------------------------


class _Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_crafted_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = save_checkpoint({"model": {}, "evil": _Payload(marker)}, tmp_path / "last.ckpt")  # valid magic and SHA-256
    with pytest.raises(CheckpointError, match="refused to load.*tampered"):
        load_checkpoint(path)
    assert not marker.exists()


def test_crafted_run_checkpoint_is_refused_on_resume(tmp_path, capsys):
    argv = ["run", *TINY, "--output", str(tmp_path), "--name", "t"]
    assert main(argv) == 0
    run = tmp_path / "t" / "ceag-s90-seed0"
    (run / "metrics.json").unlink()  # unfinished: the next call resumes from last.ckpt
    (run / "prev.ckpt").unlink(missing_ok=True)
    marker = tmp_path / "pwned"
    save_checkpoint({"evil": _Payload(marker)}, run / "last.ckpt")
    err = _exit_2(capsys, argv)
    assert "no usable checkpoint" in err and "refused to load" in err
    assert not marker.exists()


def test_crafted_dense_cache_entry_is_rebuilt_without_running_code(tmp_path):
    cfg = ExperimentConfig(
        dataset="synthetic",
        dataset_options={"num_groups": 4, "num_train": 300},
        hidden=(8,),
        dense_epochs=1,
        pruning_epochs=1,
        mitigation_epochs=1,
        output_root=str(tmp_path),
        progress=False,
    )
    data = exp.load_data(cfg)
    logs: list[str] = []
    reference = dense_model(cfg, data, 0, log=logs.append)
    (cache,) = (tmp_path / exp.DENSE_CACHE).glob("*.ckpt")
    marker = tmp_path / "pwned"
    save_checkpoint({"model": _Payload(marker)}, cache)
    again = dense_model(cfg, data, 0, log=logs.append)
    assert not marker.exists() and "ignoring unusable cache entry" in logs[-2]
    for a, b in zip(reference.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_round_trip_restores_every_rng(tmp_path):
    import random

    import numpy as np

    from ceag.train.checkpoint import rng_state as _rng_state
    from ceag.train.checkpoint import set_rng_state as _set_rng_state

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    path = save_checkpoint({"rng": _rng_state()}, tmp_path / "c.ckpt")
    want = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    _set_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()) == want


# -- 9. a half-loaded dense cache entry ------------------------------------------------------


def test_dense_cache_with_wrong_shapes_trains_from_fresh_weights(tmp_path):
    cfg = ExperimentConfig(
        dataset="synthetic",
        dataset_options={"num_groups": 4, "num_train": 300},
        hidden=(8,),
        dense_epochs=1,
        pruning_epochs=1,
        mitigation_epochs=1,
        output_root=str(tmp_path),
        progress=False,
    )
    data = exp.load_data(cfg)
    reference = dense_model(cfg, data, 0, log=lambda m: None)
    (cache,) = (tmp_path / exp.DENSE_CACHE).glob("*.ckpt")
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    state[list(state)[-1]] = torch.zeros(3)  # the first tensors copy in, the last one fails
    for k in list(state)[:-1]:
        state[k].fill_(7.0)
    save_checkpoint({"model": state}, cache)
    again = dense_model(cfg, data, 0, log=lambda m: None)
    for a, b in zip(reference.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


# -- 2 and 3. the final sparsity whatever the schedule ---------------------------------------


def _tiny_trainer(**kw) -> Trainer:
    gen = torch.Generator().manual_seed(0)
    x, group = torch.randn(200, 6, generator=gen), torch.randint(0, 3, (200,), generator=gen)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(MaskedLinear(6, 32), nn.ReLU(), MaskedLinear(32, 2))
    cfg = TrainConfig(num_groups=3, method="nft", final_sparsity=0.9, batch_size=50, progress=False, **kw)
    return Trainer(cfg, model, torch.utils.data.TensorDataset(x, y, group))


@pytest.mark.parametrize("pruning_epochs", [1, 2, 3])
def test_no_mitigation_epochs_still_reaches_the_final_sparsity(pruning_epochs):
    t = _tiny_trainer(pruning_epochs=pruning_epochs, mitigation_epochs=0)
    t.fit()
    assert abs(sparsity_report(t.model).masked_overall.sparsity - 0.9) < 0.01
    assert abs(t.history[-1]["sparsity"] - 0.9) < 0.01


def test_no_sparse_epochs_is_refused_up_front(tmp_path, capsys):
    with pytest.raises(ValueError, match="pruning_epochs \\+ mitigation_epochs must be >= 1"):
        TrainConfig(num_groups=2, pruning_epochs=0, mitigation_epochs=0)
    err = _exit_2(capsys, ["run", *TINY, "--pruning-epochs", "0", "--mitigation-epochs", "0", "--output", str(tmp_path)])
    assert "--pruning-epochs" in err
    assert not any(tmp_path.iterdir())


def test_reports_state_the_measured_sparsity(tmp_path, capsys):
    argv = ["run", *TINY, "--pruning-epochs", "3", "--mitigation-epochs", "0", "--output", str(tmp_path), "--name", "m"]
    assert main(argv) == 0
    out = capsys.readouterr()
    metrics = json.loads((tmp_path / "m" / "ceag-s90-seed0" / "metrics.json").read_text())
    assert abs(metrics["measured_sparsity"] - 0.9) < 0.01
    assert f"sparsity {metrics['measured_sparsity']:.1%}" in out.err
    assert f"90% ({metrics['measured_sparsity']:.2%})" in out.out
    assert "(measured)" in (tmp_path / "m" / "results.md").read_text()


# -- 4. two processes on one run folder -------------------------------------------------------


def test_second_process_on_a_locked_folder_names_the_holder(tmp_path):
    with _held_by_another_process(tmp_path / LOCK_NAME) as holder:
        with pytest.raises(FolderInUseError, match=f"in use by PID {holder.pid}") as exc:
            with lock(tmp_path / LOCK_NAME, what="run folder x"):
                pass
        assert exc.value.pid == holder.pid
    with lock(tmp_path / LOCK_NAME, what="x"):  # a killed holder leaves no stale lock
        with lock(tmp_path / LOCK_NAME, what="x"):  # nested in one process: no self-deadlock
            pass


def test_concurrent_cli_runs_on_one_name_and_sigterm(tmp_path):
    """A second `ceag run --name t` refuses while the first trains; SIGTERM then stops the
    first with exit 143 and a line saying which checkpoint it leaves."""
    argv = [
        sys.executable,
        "-m",
        "ceag",
        "run",
        *TINY,
        "--mitigation-epochs",
        "2000",
        "--output",
        str(tmp_path),
        "--name",
        "t",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        run = tmp_path / "t" / "ceag-s90-seed0"
        deadline = time.time() + 120
        while not (run / "last.ckpt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert first.poll() is None, "the first run ended too soon for the test"
        assert second.returncode == 2, second.stderr
        assert f"in use by PID {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert (run / "last.ckpt").exists()  # nothing of the first's was removed
        first.terminate()
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ceag: terminated (SIGTERM); ") and f"{run / 'last.ckpt'} holds the run at epoch" in last, err
    assert "Traceback" not in err


def test_trainer_locks_its_output_dir(tmp_path):
    t = _tiny_trainer(pruning_epochs=1, mitigation_epochs=1, output_dir=str(tmp_path))
    with _held_by_another_process(tmp_path / LOCK_NAME) as holder:
        leftover = tmp_path / ".last.ckpt.abc.tmp"
        leftover.write_bytes(b"x")
        with pytest.raises(FolderInUseError, match=f"run folder {tmp_path} is in use by PID {holder.pid}"):
            t.fit()
        assert leftover.exists()  # nothing of the holder's was touched


# -- 5. duplicates after normalisation ----------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seeds", "0,0"], "seeds has duplicates"),
        (["--sparsities", "0.9,90%"], "sparsities has duplicates"),
        (["--sparsities", "0.9,0.90000000000004"], "sparsities has duplicates"),
    ],
)
def test_duplicate_grid_values_are_refused(tmp_path, capsys, flags, message):
    err = _exit_2(capsys, ["sweep", *TINY, "--methods", "nft", *flags, "--output", str(tmp_path)])
    assert message in err and "--s" in err
    assert not any(tmp_path.iterdir())


def test_close_sparsities_get_distinct_folders():
    assert exp.run_dir_name("ceag", 0.9, 0) == "ceag-s90-seed0"
    assert exp.run_dir_name("ceag", 0.995, 0) == "ceag-s99.5-seed0"
    assert exp.run_dir_name("ceag", 0.90004, 0) != exp.run_dir_name("ceag", 0.9, 0)
    ExperimentConfig(sparsities=(0.9, 0.90004))  # distinct: accepted


def test_reserved_names_are_refused(capsys, tmp_path):
    err = _exit_2(capsys, ["run", *TINY, "--name", ".dense-cache", "--output", str(tmp_path)])
    assert "--name" in err and "reserved" in err


# -- 10. one permission policy -----------------------------------------------------------------


def test_every_file_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["run", *TINY, "--output", str(tmp_path), "--name", "p"]) == 0
        assert main(["run", *TINY, "--output", str(tmp_path), "--name", "q", "--dataset", "synthetic"]) == 0
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "last.ckpt" for p in files) and any(p.suffix == ".json" for p in files)
    modes = {p.relative_to(tmp_path): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_atomic_write_follows_a_strict_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o600


# -- 8. ConstrainedMethod.to() moves every tensor -------------------------------------------


def test_method_to_moves_the_constrained_mask(monkeypatch):
    """No GPU here: Tensor.to is faked for "cuda" to record which tensors were moved."""
    from ceag.methods import build_method
    from ceag.metrics import GroupStats

    G = 4
    stats = GroupStats(count=torch.full((G,), 50), correct=torch.full((G,), 40), loss_sum=torch.ones(G, dtype=torch.float64))
    constrained = torch.tensor([True, False, True, True])
    m = build_method("ceag", G, dense=stats, constrained=constrained)
    moved: list[torch.Tensor] = []
    real_to = torch.Tensor.to

    def fake_to(self, *args, **kwargs):
        dev = args[0] if args else kwargs.get("device")
        if isinstance(dev, (str, torch.device)) and torch.device(dev).type == "cuda":
            moved.append(self)
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    m.to("cuda")
    assert any(t is m.constrained for t in moved)
    assert m.device == torch.device("cuda")


# -- one error policy for the CLI -------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--seed", "99999999999999999999999"], "--seed"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "--device"),
        (["--device", "meta"], "--device"),
        (["--device", "cpu:1"], "--device"),
        (["--dual-lr", "-1e-3"], "--dual-lr"),
        (["--lr", "-1E+2"], "--lr"),
        (["--groups", "0"], "--groups"),
        (["--groups", "1000000"], "--groups"),
        (["--pruning-epochs", "-1"], "--pruning-epochs"),
    ],
)
def test_user_mistakes_name_the_flag_and_write_nothing(tmp_path, capsys, flags, named):
    err = _exit_2(capsys, ["run", *TINY, *flags, "--output", str(tmp_path)])
    assert named in err, err
    assert not any(tmp_path.iterdir())  # no config.json, no empty run folder


def test_bad_method_options_fail_before_any_training(tmp_path):
    with pytest.raises(ValueError, match="backend must be one of"):
        ExperimentConfig(methods=("nft", "ceag"), method_options={"backend": "fast"}, output_root=str(tmp_path))
    with pytest.raises(TypeError, match="method_options.*unexpected keyword"):
        TrainConfig(num_groups=3, method_options={"not_an_option": 1})


def test_data_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    err = _exit_2(capsys, ["run", "--dataset", "adult", "--data-dir", str(f), "--output", str(tmp_path / "o")])
    assert f"{f} is a file, not a folder" in err and "--data-dir" in err


def test_bad_extension_path_names_the_variable(tmp_path):
    bad = tmp_path / "lib.so"
    bad.write_bytes(b"not a library")
    for path in (bad, tmp_path / "missing.so"):
        out = subprocess.run(
            [sys.executable, "-c", "import ceag"],
            capture_output=True,
            text=True,
            env={**os.environ, "CEAG_EXTENSION_PATH": str(path)},
            timeout=120,
        )
        assert out.returncode != 0
        assert f"CEAG_EXTENSION_PATH={str(path)!r} cannot be loaded" in out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("content", ["", "[]", "{"])
def test_unreadable_config_json_is_named(tmp_path, capsys, content):
    argv = ["run", *TINY, "--output", str(tmp_path), "--name", "c"]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text(content)
    err = _exit_2(capsys, argv)
    assert f"{tmp_path / 'c' / 'config.json'} is not a readable experiment config" in err


@pytest.mark.parametrize("content", ["[]", '{"method": "ceag"}', '{"summary": 1}'])
def test_metrics_json_of_the_wrong_shape_is_set_aside(tmp_path, capsys, content):
    argv = ["run", *TINY, "--output", str(tmp_path), "--name", "w"]
    assert main(argv) == 0
    metrics = tmp_path / "w" / "ceag-s90-seed0" / "metrics.json"
    good = json.loads(metrics.read_text())
    metrics.write_text(content)
    assert main(argv) == 0
    assert "unreadable" in capsys.readouterr().err
    assert json.loads(metrics.read_text())["summary"] == good["summary"]


def test_rerun_with_another_method_keeps_the_first(tmp_path, capsys):
    base = ["run", *TINY, "--output", str(tmp_path), "--name", "m"]
    assert main([*base, "--method", "nft"]) == 0
    assert main([*base, "--method", "ceag"]) == 0
    md = (tmp_path / "m" / "results.md").read_text()
    assert "| NFT |" in md and "| CEAG |" in md
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["methods"] == ["nft", "ceag"]
    err = _exit_2(capsys, [*base, "--tolerance", "0.05"])  # anything but the grid: refused
    assert "different config (tolerance differ)" in err


def test_internal_errors_keep_their_traceback(tmp_path, monkeypatch):
    def bug(*a, **k):
        raise ValueError("an internal bug")

    monkeypatch.setattr(exp.runner, "_run_experiment", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["run", *TINY, "--output", str(tmp_path)])


def test_warnings_are_one_line(tmp_path, capsys, monkeypatch):
    import warnings

    def warn(*a, **k):
        warnings.warn("something to know", RuntimeWarning, stacklevel=2)
        raise UsageError("stop here")

    monkeypatch.setattr(exp.runner, "_run_experiment", warn)
    with pytest.raises(SystemExit):
        main(["run", *TINY, "--output", str(tmp_path)])
    assert capsys.readouterr().err.splitlines() == ["ceag: warning: something to know", "ceag: error: stop here"]


def test_group_count_is_bounded():
    from ceag.methods import build_method
    from ceag.ops import group_cross_entropy

    x, t = torch.randn(8, 3), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="num_groups=1000000000 is more than"):
        group_cross_entropy(x, t, t, 10**9)
    with pytest.raises(ValueError, match="num_groups=1000000000 is more than"):
        build_method("nft", 10**9)


def test_dense_cache_entry_in_use_is_waited_for(tmp_path):
    cfg = ExperimentConfig(
        dataset="synthetic",
        dataset_options={"num_groups": 4, "num_train": 300},
        hidden=(8,),
        dense_epochs=1,
        pruning_epochs=1,
        mitigation_epochs=1,
        output_root=str(tmp_path),
        progress=False,
    )
    data = exp.load_data(cfg)
    entry = tmp_path / exp.DENSE_CACHE / f"{exp.dense_cache._dense_key(cfg, data, 0)}.lock"
    with _held_by_another_process(entry, seconds=1.5) as holder:
        logs: list[str] = []
        start = time.perf_counter()
        dense_model(cfg, data, 0, log=logs.append)
        assert time.perf_counter() - start > 0.5  # it waited for the holder's lock
    assert logs[0] == f"dense model (seed 0): waiting for PID {holder.pid}, which is training it"


def test_checkpoints_of_the_previous_format_still_load(tmp_path):
    """Before this change numpy's RNG state was pickled as an ndarray: such a checkpoint loads
    (only the array-building globals are allowed), and resuming restores that state."""
    import random

    import numpy as np

    from ceag.train.checkpoint import set_rng_state as _set_rng_state

    np.random.seed(7)
    legacy = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    want = np.random.rand(3).tolist()
    path = save_checkpoint({"rng": legacy, "model": {"w": torch.ones(2)}}, tmp_path / "old.ckpt")
    _set_rng_state(load_checkpoint(path)["rng"])
    assert np.random.rand(3).tolist() == want
