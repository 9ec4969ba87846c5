"""`torchrun --nproc_per_node 2 -m ceag run ...`: data-parallel experiments on gloo.

Rank 0 alone writes and prints; the result matches one process on the same global batches
(within tests/test_distributed.py's tolerances); a kill -9 of the whole job resumes from
the last checkpoint and ends where an uninterrupted job ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ceag.train import load_checkpoint, save_checkpoint

TORCHRUN = Path(sys.executable).with_name("torchrun")
ARGS = [
    "--dataset",
    "synthetic",
    "--groups",
    "4",
    "--samples",
    "800",
    "--hidden",
    "16,16",
    "--dense-epochs",
    "1",
    "--pruning-epochs",
    "1",
    "--batch-size",
    "100",
    "--min-count",
    "5",
    "--no-progress",
    "--no-plots",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.skipif(
    not TORCHRUN.exists() or not sys.platform.startswith("linux"), reason="torchrun next to this python, and /proc"
)


def _torchrun(argv: list[str], port: int, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(port), "-m", "ceag", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
        **kw,
    )


def _model(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.ckpt")["model"]


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants (found through /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    order, todo = [], [pid]
    while todo:
        p = todo.pop()
        order.append(p)
        todo += children.get(p, [])
    for p in reversed(order):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    argv = ["run", *ARGS, "--method", "nft", "--mitigation-epochs", "2", "--name", "t"]
    job = _torchrun([*argv, "--output", str(tmp_path / "ddp")], _free_port())
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    assert out.count("| NFT |") == 1  # rank 0 prints the table, rank 1 nothing
    single = subprocess.run(
        [sys.executable, "-m", "ceag", *argv, "--output", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    run = "nft-s90-seed0"
    a, b = _model(tmp_path / "ddp" / "t" / run), _model(tmp_path / "one" / "t" / run)
    for k in b:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=1e-5, rtol=0, msg=k)
    ma = json.loads((tmp_path / "ddp" / "t" / run / "metrics.json").read_text())
    mb = json.loads((tmp_path / "one" / "t" / run / "metrics.json").read_text())
    assert abs(ma["summary"]["train"]["accuracy"] - mb["summary"]["train"]["accuracy"]) <= 2 / 640


def _saved_epoch(path) -> int:
    """The epoch of the checkpoint at ``path``, or -1 while there is none: a save rotates the
    old ``last.ckpt`` to ``prev.ckpt`` before the new one takes its name, so the file can be
    missing between an ``exists()`` and the read."""
    try:
        return int(load_checkpoint(path)["epoch"])
    except FileNotFoundError:
        return -1


def test_kill_9_of_the_job_resumes_to_the_same_end(tmp_path):
    """CEAG, whose ranks each keep replay buffers of their own slice of every batch: a resume
    that gave rank 1 rank 0's buffers ended elsewhere (issue 24, bad 2)."""
    argv = ["run", *ARGS, "--method", "ceag", "--mitigation-epochs", "12", "--checkpoint-every-steps", "2", "--name", "t"]
    ref = _torchrun([*argv, "--output", str(tmp_path / "ref")], _free_port())
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-3000:]
    out = tmp_path / "killed"
    shutil.copytree(tmp_path / "ref" / ".dense-cache", out / ".dense-cache")  # the same dense model, not retrained
    job = _torchrun([*argv, "--output", str(out)], _free_port())
    run = out / "t" / "ceag-s90-seed0"
    deadline = time.time() + 300
    while job.poll() is None and time.time() < deadline:
        if _saved_epoch(run / "last.ckpt") >= 3:
            _kill_tree(job.pid)  # torchrun and both workers at once (they run in their own sessions)
            break
        time.sleep(0.05)
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    time.sleep(1)
    assert not (run / "metrics.json").exists()  # no worker outlived the kill
    # A different (valid) dense model in the cache: only a resume from last.ckpt ends as the reference.
    (entry,) = (out / ".dense-cache").glob("*.ckpt")
    state = load_checkpoint(entry)
    save_checkpoint({**state, "model": {k: v * 2 for k, v in state["model"].items()}}, entry)
    again = _torchrun([*argv, "--output", str(out)], _free_port())
    assert again.wait(timeout=300) == 0, again.stderr.read()[-3000:]
    a, b = _model(run), _model(tmp_path / "ref" / "t" / "ceag-s90-seed0")
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    ma = json.loads((run / "metrics.json").read_text())
    mb = json.loads((tmp_path / "ref" / "t" / "ceag-s90-seed0" / "metrics.json").read_text())
    assert ma["summary"] == mb["summary"]
    strip = [{k: v for k, v in row.items() if k not in ("seconds", "epoch_seconds")} for row in ma["history"]]
    assert strip == [{k: v for k, v in row.items() if k not in ("seconds", "epoch_seconds")} for row in mb["history"]]
