"""Faults: SIGKILL at random points, corrupted checkpoints, NaN / Inf, unwritable or full disks.

The kill campaign runs ``ceag run`` (tiny synthetic run) through ``faults_kill.py``, which
SIGKILLs the process at seeded random points: after training steps, inside checkpoint writes
(temp file written / last.ckpt rotated to prev.ckpt / new file renamed), inside the dense
cache, metrics.json and results.json writes, and from outside after a random delay. Between
kills some ``last.ckpt`` files are corrupted. Every time the same command is re-run; at the
end metrics, results, history and the final checkpoint (weights, optimizer, method, RNG)
must equal those of an uninterrupted run exactly. Reduced form by default (8 kills, ~35 s);
the long one (50 kills, ~3.5 min; the folder's watchdog allows 300 s per test by default)::

    CEAG_WATCHDOG_S=1800 OMP_NUM_THREADS=1 .venv/bin/pytest tests/reliability/test_faults.py -m slow -s
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import ceag._io as io_mod
import ceag.methods
from ceag.app.cli import main
from ceag.nn import MaskedLinear
from ceag.train import CheckpointError, NonFiniteError, OutputError, TrainConfig, Trainer, epoch_permutation, load_checkpoint

HELPER = Path(__file__).with_name("faults_kill.py")
RUN = "ceag-s90-seed0"  # the run folder of `ceag run` with the default method and sparsity
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL, /proc/self/fd")

# ~60 sparse steps (12 per epoch), checkpoints every 4 steps: one run takes ~2 s after start-up.
SMALL = [
    "run",
    "--dataset",
    "synthetic",
    "--groups",
    "5",
    "--samples",
    "600",
    "--hidden",
    "16,16",
    "--dense-epochs",
    "2",
    "--pruning-epochs",
    "2",
    "--mitigation-epochs",
    "3",
    "--batch-size",
    "50",
    "--min-count",
    "5",
    "--checkpoint-every-steps",
    "4",
    "--no-progress",
    "--no-plots",
    "--name",
    "k",
]
# ~260 steps, checkpoints every 5 steps (long campaign).
LONG = [
    "run",
    "--dataset",
    "synthetic",
    "--groups",
    "6",
    "--samples",
    "800",
    "--hidden",
    "24,24",
    "--dense-epochs",
    "3",
    "--pruning-epochs",
    "3",
    "--mitigation-epochs",
    "5",
    "--batch-size",
    "25",
    "--min-count",
    "5",
    "--checkpoint-every-steps",
    "5",
    "--no-progress",
    "--no-plots",
    "--name",
    "k",
]


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _ceag(argv: list[str], output: Path, fault: str = "none", delay: float | None = None) -> tuple[int, str]:
    """Run ``ceag`` in a fresh process with ``fault`` (faults_kill.py); with ``delay``, SIGKILL
    it that many seconds after it is ready (imports done). Returns (exit status, stderr)."""
    ready = output.with_name(output.name + ".ready")
    ready.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CEAG_FAULT_READY": str(ready)}
    log = output.with_name(output.name + ".stderr")
    with open(log, "w+") as err:
        cmd = [sys.executable, str(HELPER), fault, *argv, "--output", str(output)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        if delay is not None:
            start = time.monotonic()
            while not ready.exists() and proc.poll() is None and time.monotonic() - start < 120:
                time.sleep(0.005)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=600)
        err.seek(0)
        return rc, err.read()


def _same(a, b) -> bool:
    """Exact equality of nested checkpoint contents (tensors, arrays, NaN == NaN)."""
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape):
            return False
        if a.is_floating_point():
            return bool(((a == b) | (a.isnan() & b.isnan())).all())
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _outcome(output: Path) -> tuple[dict[str, str], dict]:
    """What the run produced, minus paths and wall-clock timings: JSON texts and the checkpoint."""
    exp, run = output / "k", output / "k" / RUN
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("seconds_per_step")
    results = json.loads((exp / "results.json").read_text())
    results["config"].pop("output_root")
    for row in results["rows"] + results["runs"]:
        row.pop("seconds_per_step")
    history = json.loads((run / "history.json").read_text())
    history["config"].pop("output_dir")
    state = load_checkpoint(run / "last.ckpt")
    state["config"].pop("output_dir")
    texts = {
        name: json.dumps(v, sort_keys=True) for name, v in (("metrics", metrics), ("results", results), ("history", history))
    }
    return texts, state


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "flip":
        data[-(len(data) // 3)] ^= 0x10
    elif how == "empty":
        data = bytearray()
    else:  # garbage
        data = bytearray(os.urandom(len(data)))
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------
# 1. Kill -9 campaign
# ---------------------------------------------------------------------------------------


def _plan(
    rng: random.Random, total: int, per_cycle: int, train_secs: float, corrupt: int
) -> list[tuple[str, float | None, bool]]:
    """One cycle's kills, in the order of the run: (fault, external delay, corrupt last.ckpt first)."""
    plan = [(f"write:dense:{rng.choice(['fsync', 'renamed'])}", None, False)]
    steps = sorted(rng.sample(range(1, total + 1), min(per_cycle, total)))
    corrupted = set(rng.sample(range(1, len(steps)), min(corrupt, len(steps) - 1))) if len(steps) > 1 else set()
    kinds = ["step", "save:fsync", "save:rotated", "save:renamed", "timer"]
    order = [k for _ in range(0, len(steps), len(kinds)) for k in rng.sample(kinds, len(kinds))]  # each kind in turn
    for i, (step, kind) in enumerate(zip(steps, order)):
        if kind == "timer":
            fault, delay = "none", rng.uniform(0.05, 0.6) * train_secs
        else:
            fault, delay = (f"step:{step}" if kind == "step" else f"save:{step}:{kind.split(':')[1]}"), None
        plan.append((fault, delay, i in corrupted))
    plan.append((f"write:metrics.json:{rng.choice(['fsync', 'renamed'])}", None, False))
    plan.append(("write:results.json:fsync", None, False))
    return plan


def _kind(fault: str) -> str:
    parts = fault.split(":")
    if parts[0] in ("none", "step"):
        return "external timer" if parts[0] == "none" else "after a step"
    return f"{'checkpoint' if parts[0] == 'save' else parts[1]} write ({parts[-1]})"


def _campaign(tmp_path: Path, argv: list[str], kills: int, per_cycle: int, corrupt: int, seed: int) -> dict:
    rng = random.Random(seed)
    start = time.perf_counter()
    reference = tmp_path / "reference"
    rc, err = _ceag(argv, reference, delay=1e9)  # (delay: only to time the ready mark)
    assert rc == 0, err
    ref_texts, ref_state = _outcome(reference)
    total = json.loads((reference / "k" / RUN / "metrics.json").read_text())["history"][-1]["step"]
    train_secs = time.time() - reference.with_name("reference.ready").stat().st_mtime

    n = collections.Counter()
    while n["kills"] < kills:
        out = tmp_path / f"cycle{n['cycles']}"
        run = out / "k" / RUN
        n["cycles"] += 1
        pending = 0  # corruptions due, done once both last.ckpt and prev.ckpt exist
        for fault, delay, corrupt_first in _plan(rng, total, per_cycle, train_secs, corrupt):
            if n["kills"] >= kills:
                break
            last, prev = run / "last.ckpt", run / "prev.ckpt"
            resuming = last.exists() or prev.exists()
            damaged = None
            pending += corrupt_first
            if pending and last.exists() and prev.exists() and not (run / "metrics.json").exists():
                damaged = rng.choice(["truncate", "flip", "empty", "garbage"])
                _damage(last, damaged)
                n["corruptions"] += 1
                pending -= 1
            n["resumes"] += (out / "k").exists()  # every re-run of the command after the first
            rc, err = _ceag(argv, out, fault, delay)
            n["from checkpoint"] += resuming
            n["fell back to prev.ckpt"] += "resuming from the previous checkpoint" in err
            assert "Traceback" not in err, err
            if damaged and fault != "none":  # (an external kill may come before the resume)
                assert f"unusable checkpoint: {last}" in err, (damaged, err)
            if rc == -signal.SIGKILL:
                n["kills"] += 1
                n["kills: " + _kind(fault)] += 1
            elif rc == 0:
                n["missed (run already finished)"] += 1
                break
            else:
                pytest.fail(f"exit {rc} with fault {fault}:\n{err}")
        n["resumes"] += 1
        rc, err = _ceag(argv, out)  # the same command once more, without faults
        assert rc == 0, err
        texts, state = _outcome(out)
        for name in ref_texts:
            assert texts[name] == ref_texts[name], f"{name} differs after kills (cycle {n['cycles']})"
        assert _same(state, ref_state), "final checkpoint differs after kills"
        leftovers = [p for p in (out / "k").rglob("*.tmp")]
        assert not leftovers, leftovers
        n["temp files left in .dense-cache (cleaned after 10 min)"] += len(list((out / ".dense-cache").glob("*.tmp")))
    n["seconds"] = round(time.perf_counter() - start)
    print(
        f"\nkill campaign: {n['kills']} SIGKILLs, {n['resumes']} resumes, {n['corruptions']} corrupted checkpoints; "
        f"all {n['cycles']} runs identical to the uninterrupted one\n  " + json.dumps(dict(sorted(n.items())), indent=1)
    )
    return n


@linux_only
def test_kill_campaign_reduced(tmp_path):
    n = _campaign(tmp_path, SMALL, kills=8, per_cycle=5, corrupt=1, seed=2024)
    assert n["kills"] == 8 and n["corruptions"] >= 1


@linux_only
@pytest.mark.slow
def test_kill_campaign_long(tmp_path, request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the long kill campaign runs with -m slow")
    n = _campaign(tmp_path, LONG, kills=50, per_cycle=20, corrupt=4, seed=7)
    assert n["kills"] == 50 and n["corruptions"] >= 4


# ---------------------------------------------------------------------------------------
# Trainer-level set-up
# ---------------------------------------------------------------------------------------

G = 4


def _data(n: int = 600, d: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    group = torch.multinomial(torch.tensor([0.6, 0.2, 0.1, 0.1]), n, replacement=True, generator=gen)
    x = torch.randn(n, d, generator=gen)
    y = ((x * torch.randn(G, d, generator=gen)[group]).sum(1) > 0).long()
    return torch.cat([x, nn.functional.one_hot(group, G).float()], 1), y, group


def _model(d_in: int = 12, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(MaskedLinear(d_in, 32), nn.ReLU(), nn.Dropout(0.1), MaskedLinear(32, 32), nn.ReLU(), nn.Linear(32, 2))


def _config(tmp: Path | None, **kw) -> TrainConfig:
    base = dict(
        num_groups=G,
        method="ceag",
        tolerance=0.02,
        dual_lr=0.05,
        buffer_size=10,
        method_options={"multiplier_sum_warning": None},
        final_sparsity=0.8,
        pruning_epochs=1,
        mitigation_epochs=2,
        lr=0.02,
        batch_size=50,
        eval_batch_size=600,
        progress=False,
        output_dir=None if tmp is None else str(tmp),
    )
    base.update(kw)
    return TrainConfig(**base)


def _finite(state) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(state.isfinite().all())
    if isinstance(state, dict):
        return all(_finite(v) for v in state.values())
    return True


# ---------------------------------------------------------------------------------------
# 2. Corrupted checkpoint -> the previous good one
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    t = Trainer(_config(tmp_path_factory.mktemp("full")), _model(), TensorDataset(*_data()))
    t.fit()
    return t


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage", "missing"])
def test_unusable_last_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted, damage):
    ds = TensorDataset(*_data())
    first = Trainer(_config(tmp_path, checkpoint_every_steps=5), _model(), ds)
    first.fit(stop_at_step=23)  # checkpoints at steps 5, 10, 15, 20: last.ckpt 20, prev.ckpt 15
    last, prev = first.checkpoint_path, first.previous_checkpoint_path
    assert load_checkpoint(last)["global_step"] == 20 and load_checkpoint(prev)["global_step"] == 15
    if damage == "missing":  # killed between moving last.ckpt to prev.ckpt and writing the new one
        last.unlink()
    else:
        _damage(last, damage)
    second = Trainer(_config(tmp_path), _model(seed=3), ds)
    with pytest.warns(RuntimeWarning) as caught:
        second.fit(resume=True)
    said = " | ".join(str(w.message) for w in caught)
    assert f"resuming from the previous checkpoint {prev} (step 15)" in said
    if damage != "missing":
        assert f"unusable checkpoint: {last}" in said
    assert _same(second.model.state_dict(), uninterrupted.model.state_dict())
    assert _same(second.history, uninterrupted.history)
    assert load_checkpoint(last)["global_step"] == uninterrupted.global_step  # replaced by good ones


def test_without_a_usable_checkpoint_resume_refuses_and_names_the_files(tmp_path):
    ds = TensorDataset(*_data())
    t = Trainer(_config(tmp_path), _model(), ds)
    t.fit(stop_after_epoch=1)
    _damage(t.checkpoint_path, "truncate")
    _damage(t.previous_checkpoint_path, "flip")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError) as exc:
        Trainer(_config(tmp_path), _model(), ds).fit(resume=True)
    assert str(t.checkpoint_path) in str(exc.value) and str(t.previous_checkpoint_path) in str(exc.value)


# ---------------------------------------------------------------------------------------
# 3. Non-finite values
# ---------------------------------------------------------------------------------------

BAD = 137  # the poisoned training sample


def _poisoned(value: float) -> TensorDataset:
    x, y, g = _data()
    x[BAD, 0] = value
    return TensorDataset(x, y, g)


def _bad_step(epoch: int, batch_size: int = 50, seed: int = 0) -> int:
    """1-based batch of the poisoned sample in that epoch."""
    order = epoch_permutation(600, seed, epoch).tolist()
    return order.index(BAD) // batch_size + 1


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_loss_stops_after_saving_the_state_before_the_step(tmp_path, value):
    ds = _poisoned(value)
    t = Trainer(_config(tmp_path), _model(), ds)
    step = _bad_step(0)
    with pytest.raises(NonFiniteError) as exc:
        t.fit()
    msg = str(exc.value)
    assert f"non-finite loss and gradients at epoch 0 (pruning), step {step} (batch {step} of 12); stopped" in msg
    assert str(t.checkpoint_path) in msg and "on_nonfinite='skip'" in msg
    state = load_checkpoint(t.checkpoint_path)
    assert (state["epoch"], state["batch"], state["global_step"]) == (0, step - 1, step - 1)
    assert _finite(state["model"]) and _finite(state["optimizer"]["state"])
    assert state["method"]["num_steps"] == step - 1 and _finite(state["method"])
    assert not (Path(tmp_path) / "history.json").exists()  # nothing of the bad step was recorded

    # The stopped run resumes with on_nonfinite="skip" and ends where a skipping run ends.
    skip = _config(tmp_path, on_nonfinite="skip")
    resumed = Trainer(skip, _model(seed=9), ds)
    with pytest.warns(RuntimeWarning, match="skipped epoch"):
        resumed.fit(resume=True)
    direct = Trainer(dataclasses.replace(skip, output_dir=str(tmp_path / "direct")), _model(), ds)
    with pytest.warns(RuntimeWarning) as caught:
        direct.fit()
    said = [str(w.message) for w in caught]
    assert f"skipped epoch 0 (pruning), step {step} (batch {step} of 12): non-finite loss and gradients" in said
    assert _same(resumed.model.state_dict(), direct.model.state_dict())
    assert _same(resumed.history, direct.history)
    assert [r["skipped_steps"] for r in direct.history] == [1, 1, 1]  # the poisoned sample, every epoch
    assert _finite(direct.model.state_dict()) and bool(direct.method.multipliers.isfinite().all())
    assert direct.method.num_steps == direct.global_step - 3  # the skipped steps were undone


def test_nonfinite_in_the_dense_phase_names_it(tmp_path):
    t = Trainer(_config(tmp_path, dense_epochs=1), _model(), _poisoned(math.nan))
    with pytest.raises(NonFiniteError, match=r"at epoch 0 \(dense\), step \d+ "):
        t.fit()
    assert _finite(load_checkpoint(t.checkpoint_path)["model"])


@pytest.fixture
def nan_multipliers(monkeypatch):
    """The 7th dual step of CEAG turns the multipliers to NaN."""
    real = ceag.methods.CEAG._dual_step
    calls = {"n": 0}

    def dual_step(self, out):
        violation = real(self, out)
        calls["n"] += 1
        if calls["n"] == 7:
            self.multiplier.weight.data.fill_(math.nan)
        return violation

    monkeypatch.setattr(ceag.methods.CEAG, "_dual_step", dual_step)


def test_nonfinite_multipliers_stop(tmp_path, nan_multipliers):
    t = Trainer(_config(tmp_path, constraints_during_pruning=True), _model(), TensorDataset(*_data()))
    with pytest.raises(NonFiniteError, match=r"non-finite loss, multipliers and gradients at epoch 0 \(pruning\), step 7 "):
        t.fit()
    state = load_checkpoint(t.checkpoint_path)
    assert state["global_step"] == 6 and _finite(state["method"])


def test_nonfinite_multipliers_skip_undoes_the_step(tmp_path, nan_multipliers):
    t = Trainer(_config(None, constraints_during_pruning=True, on_nonfinite="skip"), _model(), TensorDataset(*_data()))
    with pytest.warns(
        RuntimeWarning, match=r"skipped epoch 0 \(pruning\), step 7 .*: non-finite loss, multipliers and gradients"
    ):
        t.fit()
    assert [r["skipped_steps"] for r in t.history] == [1, 0, 0]
    assert bool(t.method.multipliers.isfinite().all()) and t.history[-1]["multiplier_sum"] > 0
    assert t.method.num_steps == t.global_step - 1


def test_on_nonfinite_is_validated():
    with pytest.raises(ValueError, match="on_nonfinite"):
        _config(None, on_nonfinite="ignore")


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
    "--name",
    "t",
]


@pytest.fixture
def nan_data(monkeypatch):
    """`ceag` sees synthetic data with one NaN feature in a training sample."""
    from ceag.app import experiment

    real = experiment.load_data

    def load(cfg):
        data = real(cfg)
        data.train.tensors[0][7, 0] = math.nan
        return data

    monkeypatch.setattr(experiment.runner, "load_data", load)


def test_cli_nonfinite_stops_with_one_line_or_skips(tmp_path, capsys, nan_data):
    with pytest.raises(SystemExit) as exc:
        main(["run", *TINY, "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("ceag: error: dense training (seed 0), epoch 0, step ") and "non-finite loss" in line
    assert not list((tmp_path / ".dense-cache").glob("*.ckpt"))  # nothing cached

    assert main(["run", *TINY, "--output", str(tmp_path), "--on-nonfinite", "skip"]) == 0
    err = capsys.readouterr().err
    assert "1 non-finite steps skipped" in err
    warned = [line for line in err.splitlines() if line.startswith("ceag: warning: ")]  # one line each
    assert warned and all("skipped" in line for line in warned), err
    metrics = json.loads((tmp_path / "t" / RUN / "metrics.json").read_text())
    assert [r["skipped_steps"] for r in metrics["history"]] == [1, 1]


# ---------------------------------------------------------------------------------------
# 4. Unwritable output folder, full disk, failed writes
# ---------------------------------------------------------------------------------------


def _one_line_exit(capsys, argv: list[str], only: bool = False) -> str:
    """Exit status 2 and the error in one line (the last; with ``only``, nothing before it)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exc.value.code == 2, err
    assert "Traceback" not in err and lines[-1].startswith("ceag: error: ") and (len(lines) == 1 or not only), err
    return lines[-1]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_unwritable_output_fails_before_anything_runs(tmp_path, capsys, monkeypatch, code):
    # As root, chmod does not stop writes: the refusal is simulated where the probe is made.
    real = io_mod.tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and Path(dir).is_relative_to(tmp_path):
            raise OSError(code, os.strerror(code), str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(io_mod.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr("ceag.app.experiment.runner.load_data", lambda cfg: pytest.fail("data loaded before the check"))
    err = _one_line_exit(capsys, ["run", *TINY, "--output", str(tmp_path)], only=True)
    assert err == f"ceag: error: output folder {tmp_path / 't'} is not writable: {os.strerror(code)}" + (
        " (free some space, fix the permissions or choose another --output; then re-run the same command to resume)"
    )
    with pytest.raises(OutputError, match="is not writable"):
        io_mod.check_output_dir(tmp_path / "x")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_folder_for_real(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        err = _one_line_exit(capsys, ["run", *TINY, "--output", str(ro)], only=True)
    finally:
        ro.chmod(0o755)
    assert "is not writable" in err


def test_full_disk_fails_before_training(tmp_path, capsys, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(io_mod.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    err = _one_line_exit(capsys, ["run", *TINY, "--output", str(tmp_path)], only=True)
    assert "not enough free space for" in err and "0.0 MiB free" in err
    assert not (tmp_path / ".dense-cache").exists()


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-ref")
    assert main(["run", *TINY, "--checkpoint-every-steps", "2", "--output", str(out)]) == 0
    return json.loads((out / "t" / RUN / "metrics.json").read_text())


def test_disk_full_mid_run_is_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch, tiny_reference):
    real, calls = os.fsync, {"n": 0}

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}") if sys.platform.startswith("linux") else ""
        if ".last.ckpt." in name:
            calls["n"] += 1
            if calls["n"] == 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    argv = ["run", *TINY, "--checkpoint-every-steps", "2", "--output", str(tmp_path)]
    monkeypatch.setattr(os, "fsync", fsync)
    err = _one_line_exit(capsys, argv)
    monkeypatch.undo()
    run = tmp_path / "t" / RUN
    if sys.platform.startswith("linux"):
        assert err == (
            f"ceag: error: cannot write {run / 'last.ckpt'}: No space left on device "
            "(free some space, fix the permissions or choose another --output; then re-run the same command to resume)"
        )
        # Saves at steps 2, 4, 5 (epoch end), 7: the 4th failed, the two before it are intact.
        assert load_checkpoint(run / "last.ckpt")["global_step"] == 5
        assert load_checkpoint(run / "prev.ckpt")["global_step"] == 4
    assert not list(run.glob("*.tmp")) and not (run / "metrics.json").exists()
    # Space freed: the same command finishes, with the numbers of an uninterrupted run.
    assert main(argv) == 0
    capsys.readouterr()
    got = json.loads((run / "metrics.json").read_text())
    for k in ("summary", "psi", "count", "history"):
        assert json.dumps(got[k]) == json.dumps(tiny_reference[k]), k

    # A full disk while writing plots (not an atomic ceag write) is one line too.
    def no_space(result):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "t" / "plots" / "a.png"))

    monkeypatch.setattr("ceag.app.experiment.runner.write_plots", no_space)
    err = _one_line_exit(capsys, [a for a in argv if a != "--no-plots"])
    assert "No space left on device" in err and "a.png" in err


def test_corrupt_metrics_json_is_remade(tmp_path, capsys, tiny_reference):
    argv = ["run", *TINY, "--checkpoint-every-steps", "2", "--output", str(tmp_path)]
    assert main(argv) == 0
    metrics = tmp_path / "t" / RUN / "metrics.json"
    metrics.write_text(metrics.read_text()[:50])
    assert main(argv) == 0
    assert "metrics.json: unreadable" in capsys.readouterr().err
    got = json.loads(metrics.read_text())
    assert json.dumps(got["summary"]) == json.dumps(tiny_reference["summary"])
    assert metrics.with_name("metrics.json.corrupt").exists()


def test_trainer_checks_its_output_folder(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(io_mod.shutil, "disk_usage", lambda path: usage(1, 1, 0))
    t = Trainer(_config(tmp_path), _model(), TensorDataset(*_data()))
    with pytest.raises(OutputError, match=f"not enough free space for {tmp_path}"):
        t.fit()
    assert t.global_step == 0 and not t.checkpoint_path.exists()


def test_atomic_write_failure_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    io_mod.atomic_write(path, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=f"cannot write {path}: No space left on device") as exc:
        io_mod.atomic_write(path, b"new")
    assert exc.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
