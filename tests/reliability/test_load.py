"""Load: bounded memory and no growth per epoch at G = 10,000 groups (reduced bench/load.py).

Each case runs ``bench/load.py --worker`` in a fresh process: a warm-up experiment at a tiny N
(libraries and allocator pools loaded: the baseline is the RSS after it, before the data is
built), then the synthetic data set, the dense model, NFT and CEAG runs through
``ceag.experiment.run_one`` (Trainer, checkpoints, history files) and ``run_experiment``'s
report, recording RSS after every epoch and the peak. Checked here, from the raw numbers:

- no growth: in each run, RSS after the last epoch − RSS after the second (both after
  ``malloc_trim``) < ``GROWTH_NOISE_MB`` + the multiplier trajectory the history keeps by design
  (``HISTORY_BYTES_PER_GROUP_EPOCH`` × G per epoch, ~0.4 MiB per epoch at G = 10,000);
- bounded peak: peak RSS − baseline ≤ ``PEAK_FACTOR`` × (data + model + optimizer state +
  method state) + ``PEAK_SLACK_MB``.

A control case adds a fake leak (``--leak-mb``: a tensor kept after every epoch) and must
fail both checks. Reduced form (N = 50,000, ~20 s on one core) by default; the full size
(N = 1,000,000, ~2 min) with ``-m slow``::

    OMP_NUM_THREADS=1 .venv/bin/pytest tests/reliability/test_load.py -m slow -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "load.py"
MB = 2**20
GROUPS = 10_000

GROWTH_NOISE_MB = 4.0
HISTORY_BYTES_PER_GROUP_EPOCH = 40
PEAK_FACTOR = 2.0
PEAK_SLACK_MB = 96.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def _measure(tmp_path: Path, samples: int, *args: str, timeout: float = 240) -> dict:
    out = tmp_path / "load.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCH), "--worker", "--samples", str(samples), "--groups", str(GROUPS),
           "--json", str(out), "--tmp", str(tmp_path), *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _violations(r: dict) -> list[str]:
    """The checks of the module docstring; [] when both hold."""
    bad = []
    for method in r["methods"]:
        epochs = [e for e in r["epochs"] if e["method"] == method]
        assert len(epochs) >= 3, "need at least 3 epochs per run"
        live = [e["rss_trimmed_mb"] for e in epochs]
        history = 0 if method == "nft" else HISTORY_BYTES_PER_GROUP_EPOCH * r["groups"] * (len(epochs) - 2) / MB
        limit = GROWTH_NOISE_MB + history
        if live[-1] - live[1] >= limit:
            bad.append(
                f"{method}: RSS grew {live[-1] - live[1]:.1f} MiB from epoch 2 to epoch {len(epochs)} "
                f"(limit {limit:.1f}); per epoch: {[round(v, 1) for v in live]}"
            )
    sizes = r["bytes"]
    first = next(iter(sizes.values()))
    state = (first["data"] + first["model"] + max(s["optimizer"] for s in sizes.values())
             + max(s["method"] + s["dense_stats"] for s in sizes.values())) / MB  # fmt: skip
    over = r["rss_mb"]["peak"] - r["rss_mb"]["baseline"]
    if over > PEAK_FACTOR * state + PEAK_SLACK_MB:
        bad.append(
            f"peak RSS {r['rss_mb']['peak']:.0f} MiB is {over:.0f} MiB over the baseline "
            f"{r['rss_mb']['baseline']:.0f}: more than {PEAK_FACTOR:g} × {state:.1f} MiB held + {PEAK_SLACK_MB:g}"
        )
    return bad


def _summary(r: dict) -> str:
    state = r["state_bytes"] / MB
    per_epoch = {m: [round(e["rss_trimmed_mb"], 1) for e in r["epochs"] if e["method"] == m] for m in r["methods"]}
    return (
        f"G={r['groups']} N={r['samples']}: baseline {r['rss_mb']['baseline']:.0f} MiB, peak {r['rss_mb']['peak']:.0f} "
        f"(+{r['rss_mb']['peak'] - r['rss_mb']['baseline']:.0f} for {state:.1f} MiB held), RSS per epoch {per_epoch}"
    )


def test_load_reduced_memory_is_bounded_and_flat(tmp_path):
    r = _measure(tmp_path, 50_000, "--test", "5000", "--pruning-epochs", "1", "--mitigation-epochs", "3")
    print(_summary(r))
    assert r["groups"] == GROUPS and len(r["epochs"]) == 2 * 4
    assert r["bytes"]["ceag"]["method"] >= GROUPS * 40  # the replay buffers (G × k) were there
    assert _violations(r) == []


def test_load_check_catches_a_leak(tmp_path):
    """The control: keeping 40 MiB more after every epoch fails both checks."""
    r = _measure(tmp_path, 20_000, "--test", "2000", "--methods", "ceag", "--pruning-epochs", "1",
                 "--mitigation-epochs", "3", "--leak-mb", "40")  # fmt: skip
    bad = _violations(r)
    assert any("RSS grew" in b for b in bad) and any("peak RSS" in b for b in bad), bad


@pytest.mark.slow
def test_load_full_size(tmp_path, request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("full size (G = 10,000, N = 1,000,000, ~2 min on one core): run with -m slow")
    r = _measure(tmp_path, 1_000_000, "--test", "50000", "--pruning-epochs", "2", "--mitigation-epochs", "3", timeout=1200)
    print(_summary(r))
    assert _violations(r) == []
