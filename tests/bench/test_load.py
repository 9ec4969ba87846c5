"""Load: bounded memory and no growth per epoch at G = 10,000 groups (reduced bench/load.py).

Each case calls ``load.run_load``, which measures in a fresh process: a warm-up experiment at a
tiny N (libraries and allocator pools loaded: the baseline is the RSS after it, before the data
is built), then the synthetic data set, the dense model, NFT and CEAG runs through the
experiment layer's ``run_one`` (Trainer, checkpoints, history files) and ``run_experiment``'s
report, recording RSS after every epoch and the peak. Checked here, from the raw numbers of
the returned ``LoadReport`` and with this file's own limits (the tool's verdict must agree):

- no growth: in each run, RSS after the last epoch − RSS after the second (both after
  ``malloc_trim``) < ``GROWTH_NOISE_MB`` + the multiplier trajectory the history keeps by design
  (``HISTORY_BYTES_PER_GROUP_EPOCH`` × G per epoch, ~0.4 MiB per epoch at G = 10,000);
- bounded peak: peak RSS − baseline ≤ ``PEAK_FACTOR`` × (data + model + optimizer state +
  method state) + ``PEAK_SLACK_MB``.

A control case adds a fake leak (``leak_mb``: a tensor kept after every epoch) and must
fail both checks. Reduced form (N = 50,000, ~20 s on one core) by default; the full size
(N = 1,000,000, ~2 min) with ``-m slow``::

    OMP_NUM_THREADS=1 .venv/bin/pytest tests/bench/test_load.py -m slow -s
"""

from __future__ import annotations

import sys

import pytest

MB = 2**20
GROUPS = 10_000

GROWTH_NOISE_MB = 4.0
HISTORY_BYTES_PER_GROUP_EPOCH = 40
PEAK_FACTOR = 2.0
PEAK_SLACK_MB = 96.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


@pytest.fixture(scope="module")
def load(bench_tool):
    return bench_tool("load")


def _measure(load, tmp_path, samples: int, timeout: float = 240, **options):
    config = load.LoadConfig(samples=samples, groups=GROUPS, tmp=str(tmp_path), threads=1, **options)
    return load.run_load(config, timeout_s=timeout)


def _violations(r) -> list[str]:
    """The checks of the module docstring; [] when both hold."""
    bad = []
    for method in r.config.methods:
        epochs = r.epochs_of(method)
        assert len(epochs) >= 3, "need at least 3 epochs per run"
        live = [e.rss_trimmed_mb for e in epochs]
        history = 0 if method == "nft" else HISTORY_BYTES_PER_GROUP_EPOCH * r.config.groups * (len(epochs) - 2) / MB
        limit = GROWTH_NOISE_MB + history
        if live[-1] - live[1] >= limit:
            bad.append(
                f"{method}: RSS grew {live[-1] - live[1]:.1f} MiB from epoch 2 to epoch {len(epochs)} "
                f"(limit {limit:.1f}); per epoch: {[round(v, 1) for v in live]}"
            )
    sizes = r.bytes
    first = next(iter(sizes.values()))
    state = (
        first["data"]
        + first["model"]
        + max(s["optimizer"] for s in sizes.values())
        + max(s["method"] + s["dense_stats"] for s in sizes.values())
    ) / MB
    over = r.rss_mb["peak"] - r.rss_mb["baseline"]
    if over > PEAK_FACTOR * state + PEAK_SLACK_MB:
        bad.append(
            f"peak RSS {r.rss_mb['peak']:.0f} MiB is {over:.0f} MiB over the baseline "
            f"{r.rss_mb['baseline']:.0f}: more than {PEAK_FACTOR:g} × {state:.1f} MiB held + {PEAK_SLACK_MB:g}"
        )
    return bad


def _summary(r) -> str:
    state = r.state_bytes / MB
    per_epoch = {m: [round(e.rss_trimmed_mb, 1) for e in r.epochs_of(m)] for m in r.config.methods}
    return (
        f"G={r.config.groups} N={r.config.samples}: baseline {r.rss_mb['baseline']:.0f} MiB, peak {r.rss_mb['peak']:.0f} "
        f"(+{r.rss_mb['peak'] - r.rss_mb['baseline']:.0f} for {state:.1f} MiB held), RSS per epoch {per_epoch}"
    )


def test_load_reduced_memory_is_bounded_and_flat(load, tmp_path):
    r = _measure(load, tmp_path, 50_000, test=5000, pruning_epochs=1, mitigation_epochs=3)
    print(_summary(r))
    assert r.config.groups == GROUPS and len(r.epochs) == 2 * 4
    assert r.bytes["ceag"]["method"] >= GROUPS * 40  # the replay buffers (G × k) were there
    assert _violations(r) == []
    assert r.verdict.no_growth and r.verdict.bounded_peak, r.verdict  # the tool agrees


def test_load_check_catches_a_leak(load, tmp_path):
    """The control: keeping 40 MiB more after every epoch fails both checks."""
    r = _measure(load, tmp_path, 20_000, test=2000, methods=("ceag",), pruning_epochs=1, mitigation_epochs=3, leak_mb=40)
    bad = _violations(r)
    assert any("RSS grew" in b for b in bad) and any("peak RSS" in b for b in bad), bad
    assert not r.verdict.no_growth and not r.verdict.bounded_peak, r.verdict  # the tool agrees


@pytest.mark.slow
def test_load_full_size(load, tmp_path, request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("full size (G = 10,000, N = 1,000,000, ~2 min on one core): run with -m slow")
    r = _measure(load, tmp_path, 1_000_000, test=50000, pruning_epochs=2, mitigation_epochs=3, timeout=1200)
    print(_summary(r))
    assert _violations(r) == []
    assert r.verdict.ok, r.verdict


def test_load_config_survives_the_command_line(load):
    """run_load hands the configuration to the worker as options: nothing is lost on the way."""
    config = load.LoadConfig(
        samples=1234,
        groups=7,
        test=99,
        hidden=(3, 5),
        methods=("ceag",),
        sparsity=0.75,
        batch_size=17,
        dense_epochs=2,
        pruning_epochs=1,
        mitigation_epochs=4,
        plots=True,
        leak_mb=1.5,
        tmp="/some/where",
        threads=2,
        verbose=True,
    )
    args = load._parse(["--worker", *config.argv()])
    assert load._config(args, args.samples[0]) == config


def test_load_report_reads_back_its_json(load):
    """The committed results (bench/results/load-*.json) read back into reports and write out unchanged."""
    import json

    paths = sorted(load.RESULTS.glob("load-*.json"))
    assert paths
    for path in paths:
        d = json.loads(path.read_text())
        r = load.LoadReport.from_dict(d)
        assert r.to_dict() == d and r.verdict.ok, path


def test_a_failed_worker_is_an_error(load, tmp_path):
    with pytest.raises(RuntimeError, match=r"load worker for N = 2,000 failed \(exit 1\)(.|\n)*no-such-folder"):
        load.run_load(load.LoadConfig(samples=2000, tmp=str(tmp_path / "no-such-folder")), timeout_s=120)
