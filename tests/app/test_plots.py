"""ceag.app.plots: the paper's figures as PNG files (valid, atomic, NaN-tolerant, readable at G = 1,000)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ceag.app import plots
from ceag.app.plots import _common, frontier, groups, training

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAN = math.nan


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def assert_png(path: Path) -> np.ndarray:
    """The file is a PNG that matplotlib reads back, of a sensible size and not blank."""
    import matplotlib.image

    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    h, w = img.shape[:2]
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert 400 <= w <= 4000 and 300 <= h <= 2000, (w, h)
    assert 0.3 <= h / w <= 1.5, (w, h)
    assert img[..., :3].std() > 0.05  # something is drawn
    return img


def assert_no_temp_files(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert left == []


def psi_values(G: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.01, 0.02, G) * scale


def history(seed: int, scale: float, *, dense: int = 3, pruning: int = 4, mitigation: int = 5, split: str = "train"):
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(dense + pruning + mitigation):
        phase = "dense" if e < dense else "pruning" if e < dense + pruning else "mitigation"
        v = NAN if phase == "dense" else scale * (0.04 + 0.02 * rng.random())
        rows.append({"epoch": e, "phase": phase, f"{split}_psi_pw": 2 * v, f"{split}_max_psi": v, f"{split}_accuracy": 0.8})
    return rows


def tradeoff_points(methods=("NFT", "CEAG"), sparsities=(0.5, 0.9, 0.99)):
    pts = []
    for j, m in enumerate(methods):
        for s in sparsities:
            pts.append(
                {
                    "method": m,
                    "sparsity": s,
                    "accuracy": 0.9 - 0.2 * s**4 - 0.01 * j,
                    "max_psi": 0.05 * s / (j + 1),
                    "psi_pw": 0.1 * s / (j + 1),
                }
            )
    return pts


def lines_labelled(ax, text):
    return [l for l in ax.get_lines() if text in l.get_label()]


# ---------------------------------------------------------------------------------------
# valid PNGs at G = 1, 40, 1,000
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("G", [1, 40, 1000])
@pytest.mark.parametrize("methods", [("CEAG",), ("nft", "el", "el_rb", "ceag")])
def test_group_gap_bars_writes_png(tmp_path, G, methods):
    psi = {}
    for j, m in enumerate(methods):
        v = psi_values(G, seed=j)
        if G > 1:
            v[G // 2] = NAN  # an absent group
        psi[m] = torch.tensor(v) if j % 2 else v  # tensors and arrays alike
    names = [f"grp {i}" for i in range(G)] if G == 40 else None
    counts = list(range(1, G + 1)) if G == 40 else None
    out = plots.group_gap_bars(psi, 0.01, tmp_path / "fig1.png", group_names=names, counts=counts, split="test")
    assert out == tmp_path / "fig1.png"
    assert_png(out)
    assert_no_temp_files(tmp_path)


@pytest.mark.parametrize("num_seeds", [1, 3])
@pytest.mark.parametrize("split", ["train", "test"])
def test_disparity_over_training_writes_png(tmp_path, num_seeds, split):
    h = {
        "NFT": [history(s, 1.0, split=split) for s in range(num_seeds)],
        "ceag": [history(10 + s, 0.4, split=split) for s in range(num_seeds)],
    }
    out = plots.disparity_over_training(h, 0.01, tmp_path / "sub" / "fig3.png", split=split)
    assert out == tmp_path / "sub" / "fig3.png"
    assert_png(out)
    assert_no_temp_files(out.parent)


@pytest.mark.parametrize("G", [1, 40, 1000])
def test_multiplier_trajectories_writes_png(tmp_path, G):
    rng = np.random.default_rng(G)
    lam = np.abs(np.cumsum(rng.normal(0, 0.01, (12, G)), axis=0))
    lam[:2] = NAN  # dense epochs
    names = [f"group ${i}" for i in range(G)] if G == 40 else None  # "$" must not start mathtext
    out = plots.multiplier_trajectories(torch.tensor(lam), tmp_path / "fig4.png", epochs=range(5, 17), group_names=names)
    assert_png(out)
    assert_no_temp_files(tmp_path)


@pytest.mark.parametrize("methods", [("CEAG",), ("NFT", "EL", "EL+RB", "CEAG", "ceag_batch", "my method")])
def test_tradeoff_writes_png(tmp_path, methods):
    pts = tradeoff_points(methods)
    pts[0]["max_psi"] = NAN
    pts[-1].update(accuracy_std=0.01, max_psi_std=0.002, psi_pw_std=None)
    out = plots.tradeoff(pts, 0.01, tmp_path / "fig2.png")
    assert_png(out)
    assert_no_temp_files(tmp_path)


# ---------------------------------------------------------------------------------------
# what the figures show
# ---------------------------------------------------------------------------------------


def test_group_gap_bars_order_nan_and_epsilon():
    nft = np.array([0.01, 0.05, NAN, -0.02, 0.03])
    ceag = np.array([0.0, 0.01, NAN, NAN, 0.02])  # group 3 absent under CEAG only
    fig = groups._group_gap_figure(
        {"NFT": nft, "CEAG": ceag}, 0.01, group_names=list("abcde"), counts=None, split="train", max_bars=60, order="psi"
    )
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "e", "a", "d"]  # worst first, "c" dropped
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == sorted([5.0, 3.0, 1.0, -2.0, 1.0, 2.0, 0.0])  # pp, no bar for NaN
    eps = lines_labelled(ax, "ε = 0.01")
    assert len(eps) == 1 and eps[0].get_linestyle() == "--" and eps[0].get_ydata()[0] == pytest.approx(1.0)
    assert "1 group omitted: too few samples to report" in fig._suptitle.get_text()
    labels = ax.get_legend_handles_labels()[1]
    assert "NFT: 2 of 4 groups above ε" in labels and "CEAG: 1 of 3 groups above ε" in labels


def test_group_gap_bars_draw_intervals_coloured_by_verdict():
    psi = np.array([0.05, 0.0, 0.02, NAN])
    lo, hi = np.array([0.03, -0.01, -0.02, NAN]), np.array([0.07, 0.005, 0.06, NAN])
    fig = groups._group_gap_figure(
        {"CEAG": psi}, 0.01, group_names=None, counts=None, split="test", max_bars=60, order="index", intervals={"CEAG": (lo, hi)}
    )
    ax = fig.axes[0]
    colours = {}
    for c in ax.collections:  # one error-bar collection per verdict present
        segs = c.get_segments()
        if segs:
            colours[tuple(np.round(c.get_color()[0][:3], 3))] = sorted(round(float(sg[0][0]), 3) for sg in segs)
    red, green, grey = (0.843, 0.188, 0.153), (0.102, 0.596, 0.314), (0.45, 0.45, 0.45)
    assert colours == {red: [0.0], green: [1.0], grey: [2.0]}  # by verdict, at each group's bar
    assert "95% interval: violates" in ax.get_legend_handles_labels()[1]
    with pytest.raises(ValueError, match="no such method"):
        groups._group_gap_figure(
            {"CEAG": psi}, 0.01, group_names=None, counts=None, split="test", max_bars=9, order="psi", intervals={"NFT": (lo, hi)}
        )


def test_long_intersection_names_keep_every_attribute():
    from ceag.app.plots._common import _short

    assert _short("Asian-Pac-Islander/Female/30-44") == "Asian-Pac…/Female/30-44"  # cut at a word break
    assert _short("White/Male/30-44") == "White/Male/30-44"
    for name in ("Amer-Indian-Eskimo/Female/30-44", "a" * 60, "x/" * 20):
        assert len(_short(name)) <= 24


def test_group_gap_bars_by_count():
    fig = groups._group_gap_figure(
        {"NFT": [0.1, 0.2, 0.3]}, 0.0, group_names=None, counts=[5, 50, 1], split="train", max_bars=60, order="count"
    )
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1 (n=50)", "0 (n=5)", "2 (n=1)"]


def test_group_gap_bars_many_groups_shows_worst_and_sorted_panel():
    G = 1000
    nft = psi_values(G)
    worst = np.argsort(-nft)[:60]
    fig = groups._group_gap_figure(
        {"NFT": nft, "CEAG": nft / 3}, 0.01, group_names=None, counts=None, split="train", max_bars=60, order="psi"
    )
    ax, ax_all = fig.axes
    assert len(ax.patches) == 2 * 60
    ticks = [int(t.get_text()) for t in ax.get_xticklabels()]
    assert ticks == worst.tolist()
    assert "60 worst of 1,000 groups under NFT" in fig._suptitle.get_text()
    curves = [l for l in ax_all.get_lines() if l.get_label() in ("NFT", "CEAG")]
    assert [len(l.get_xdata()) for l in curves] == [G, G]
    assert np.all(np.diff(curves[0].get_ydata()) <= 0)  # sorted, worst first


def test_disparity_over_training_mean_band_and_mitigation():
    runs = [history(s, 1.0) for s in range(3)]
    runs[1] = runs[1][:-1]  # a shorter run: the last epoch is the mean of the other two
    fig = training._training_figure({"CEAG": runs, "NFT": [history(7, 2.0)]}, 0.02, split="train")
    ax_pw, ax_max = fig.axes
    (line,) = [l for l in ax_max.get_lines() if l.get_label().startswith("CEAG")]
    assert "mean of 3 seeds" in line.get_label()
    y = line.get_ydata()
    assert np.isnan(y[:3]).all()  # dense epochs are not drawn
    expect = np.mean([r[5]["train_max_psi"] for r in runs]) * 100
    assert y[5] == pytest.approx(expect)
    assert y[-1] == pytest.approx(np.mean([runs[0][-1]["train_max_psi"], runs[2][-1]["train_max_psi"]]) * 100)
    assert len(ax_max.collections) == 1  # one min–max band: CEAG has 3 seeds, NFT one
    (mit,) = lines_labelled(ax_max, "mitigation starts (epoch 7)")
    assert mit.get_xdata()[0] == pytest.approx(6.5)
    assert len(lines_labelled(ax_max, "ε = 0.02")) == 1 and not lines_labelled(ax_pw, "ε")


def test_disparity_over_training_only_dense_epochs_and_json_nulls(tmp_path):
    rows = [{"epoch": e, "phase": "dense", "train_psi_pw": None, "train_max_psi": None} for e in range(3)]
    assert_png(plots.disparity_over_training({"NFT": [rows]}, 0.01, tmp_path / "a.png"))


def test_multiplier_trajectories_top_k_and_band():
    lam = np.zeros((5, 300))
    lam[:, 7] = [0, 1, 2, 3, 4]
    lam[:, 9] = [0, 5, 5, 5, 3]
    lam[:, 11] = [0, 9, 1, 1, 0]  # large peak, final 0: ties at 0 are broken by the peak
    fig = training._multiplier_figure(lam, epochs=None, group_names=None, top_k=3, title=None)
    ax = fig.axes[0]
    labelled = [l.get_label() for l in ax.get_lines() if l.get_label().startswith("group")]
    assert [s.split(" (")[0] for s in labelled] == ["group 7", "group 9", "group 11"]
    assert len(ax.collections) == 2  # min–max and 10–90% bands for the other 297 groups
    assert "3 of 300 groups" in ax.get_title()
    fig = training._multiplier_figure(lam[:, :40], epochs=None, group_names=None, top_k=3, title="t")
    grey = [l for l in fig.axes[0].get_lines() if l.get_color() == "0.6"]
    assert len(grey) == 37 and fig.axes[0].get_title() == "t"


def test_tradeoff_joins_by_sparsity_and_annotates():
    pts = tradeoff_points(("NFT",), sparsities=(0.99, 0.5, 0.9))
    fig = frontier._tradeoff_figure(pts, 0.01, split="test")
    ax_max = fig.axes[0]
    (bars,) = [c for c in ax_max.containers if c.get_label() == "NFT"]  # errorbar container
    line = bars.lines[0]
    assert np.all(np.diff(line.get_ydata()) > 0)  # sorted by sparsity: max ψ grows
    assert sorted(t.get_text() for t in ax_max.texts) == ["50%", "90%", "99%"]
    assert ax_max.get_xlabel() == "test accuracy (%)"
    assert len(lines_labelled(ax_max, "ε = 0.01")) == 1


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------

GOOD_H = {"NFT": [history(0, 1.0)]}
BAD_CASES = [
    (plots.group_gap_bars, ({}, 0.01), {}, ValueError, "psi_by_method"),
    (plots.group_gap_bars, ([0.1], 0.01), {}, TypeError, "psi_by_method"),
    (plots.group_gap_bars, ({"a": [0.1, 0.2], "b": [0.1]}, 0.01), {}, ValueError, "psi_by_method\\['b'\\]"),
    (plots.group_gap_bars, ({"a": []}, 0.01), {}, ValueError, "psi_by_method"),
    (plots.group_gap_bars, ({"a": [[0.1]]}, 0.01), {}, ValueError, "1-D"),
    (plots.group_gap_bars, ({"a": ["x"]}, 0.01), {}, TypeError, "psi_by_method"),
    (plots.group_gap_bars, ({"a": [0.1]}, -0.01), {}, ValueError, "tolerance"),
    (plots.group_gap_bars, ({"a": [0.1]}, NAN), {}, ValueError, "tolerance"),
    (plots.group_gap_bars, ({"a": [0.1]}, "0.01"), {}, TypeError, "tolerance"),
    (plots.group_gap_bars, ({"a": [0.1]}, 0.01), {"split": "val"}, ValueError, "split"),
    (plots.group_gap_bars, ({"a": [0.1]}, 0.01), {"group_names": ["x", "y"]}, ValueError, "group_names"),
    (plots.group_gap_bars, ({"a": [0.1]}, 0.01), {"counts": [1, 2]}, ValueError, "counts"),
    (plots.group_gap_bars, ({"a": [0.1]}, 0.01), {"counts": [-1]}, ValueError, "counts"),
    (plots.group_gap_bars, ({"a": [0.1]}, 0.01), {"max_bars": 0}, ValueError, "max_bars"),
    (plots.group_gap_bars, ({"a": [0.1]}, 0.01), {"order": "count"}, ValueError, "counts"),
    (plots.disparity_over_training, ({}, 0.01), {}, ValueError, "histories"),
    (plots.disparity_over_training, ({"NFT": []}, 0.01), {}, ValueError, "histories\\['NFT'\\]"),
    (plots.disparity_over_training, ({"NFT": [[1, 2]]}, 0.01), {}, TypeError, "histories\\['NFT'\\]\\[0\\]\\[0\\]"),
    (plots.disparity_over_training, (GOOD_H, -1.0), {}, ValueError, "tolerance"),
    (plots.disparity_over_training, (GOOD_H, 0.01), {"split": "dev"}, ValueError, "split"),
    (plots.disparity_over_training, (GOOD_H, 0.01), {"split": "test"}, ValueError, "test_psi_pw"),
    (plots.multiplier_trajectories, ([1.0, 2.0],), {}, ValueError, "multipliers"),
    (plots.multiplier_trajectories, (np.zeros((0, 3)),), {}, ValueError, "multipliers"),
    (plots.multiplier_trajectories, (np.zeros((2, 3)),), {"epochs": [1]}, ValueError, "epochs"),
    (plots.multiplier_trajectories, (np.zeros((2, 3)),), {"group_names": ["a"]}, ValueError, "group_names"),
    (plots.multiplier_trajectories, (np.zeros((2, 3)),), {"top_k": -1}, ValueError, "top_k"),
    (plots.multiplier_trajectories, (np.zeros((2, 3)),), {"top_k": 2.5}, TypeError, "top_k"),
    (plots.tradeoff, ([], 0.01), {}, ValueError, "points"),
    (plots.tradeoff, ({"method": "a"}, 0.01), {}, TypeError, "points"),
    (plots.tradeoff, ([{"method": "a", "sparsity": 0.5}], 0.01), {}, ValueError, "points\\[0\\] misses"),
    (plots.tradeoff, ([dict(tradeoff_points()[0], sparsity=90)], 0.01), {}, ValueError, "sparsity"),
    (plots.tradeoff, ([dict(tradeoff_points()[0], accuracy=85.0)], 0.01), {}, ValueError, "accuracy"),
    (plots.tradeoff, ([dict(tradeoff_points()[0], max_psi_std=-1)], 0.01), {}, ValueError, "max_psi_std"),
    (plots.tradeoff, ([dict(tradeoff_points()[0], method=3)], 0.01), {}, TypeError, "method"),
    (plots.tradeoff, (tradeoff_points(), -0.5), {}, ValueError, "tolerance"),
    (plots.tradeoff, (tradeoff_points(), 0.01), {"split": "val"}, ValueError, "split"),
]


@pytest.mark.parametrize("fn, args, kwargs, exc, match", BAD_CASES, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(BAD_CASES)])
def test_bad_input_raises_naming_the_argument(tmp_path, fn, args, kwargs, exc, match):
    if fn is plots.multiplier_trajectories:
        call = lambda: fn(args[0], tmp_path / "x.png", **kwargs)  # noqa: E731
    else:
        call = lambda: fn(*args, tmp_path / "x.png", **kwargs)  # noqa: E731
    with pytest.raises(exc, match=match):
        call()
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bad_path(tmp_path):
    with pytest.raises(TypeError, match="path"):
        plots.group_gap_bars({"a": [0.1]}, 0.01, 3)
    with pytest.raises(ValueError, match="directory"):
        plots.group_gap_bars({"a": [0.1]}, 0.01, tmp_path)


# ---------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------


def test_overwrites_existing_file_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "fig.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"old")
    plots.tradeoff(tradeoff_points(), 0.01, path)
    assert_png(path)
    first = path.stat().st_size
    plots.tradeoff(tradeoff_points(), 0.01, str(path))  # str works too, and again over a PNG
    assert_png(path) is not None and path.stat().st_size == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["fig.png"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "fig.png"
    path.write_bytes(b"old")

    def boom(self, *a, **k):
        a[0].write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(OSError, match="disk full"):
        plots.multiplier_trajectories(np.ones((3, 2)), path)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]


def test_file_mode_follows_umask(tmp_path):
    out = plots.multiplier_trajectories(np.ones((3, 2)), tmp_path / "fig.png")
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------------------
# styles, lazy import
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "display, key", [("NFT", "nft"), ("EL", "el"), ("EL+RB", "el_rb"), ("CEAG", "ceag"), ("CEAG-batch", "ceag_batch")]
)
def test_method_style_display_names_and_keys_agree(display, key):
    assert plots.method_style(display) == plots.method_style(key)
    assert plots.method_style(key)["label"] == display


def test_method_style_known_distinct_unknown_stable():
    known = [plots.method_style(m) for m in ("nft", "el", "el_rb", "ceag", "ceag_batch")]
    assert len({s["color"] for s in known}) == 5 and len({s["marker"] for s in known}) == 5
    other = plots.method_style("Magnitude+FT")
    assert other == plots.method_style("Magnitude+FT") and other["label"] == "Magnitude+FT"
    assert other["color"] not in {s["color"] for s in known}
    plots.method_style("nft")["color"] = "red"  # a copy: the next call is unaffected
    assert plots.method_style("nft")["color"] != "red"
    with pytest.raises(TypeError, match="name"):
        plots.method_style(None)
    with pytest.raises(ValueError, match="name"):
        plots.method_style("  ")
    # unknown names that collide in one figure get different colours
    styles = _common._styles([f"m{i}" for i in range(6)])
    assert len({s["color"] for s in styles.values()}) == 6


def test_import_is_lazy_and_pyplot_free(tmp_path):
    code = (
        "import sys, numpy as np; import ceag.app.plots as p\n"
        "assert 'matplotlib' not in sys.modules, 'imported matplotlib eagerly'\n"
        f"p.multiplier_trajectories(np.ones((2, 2)), {str(tmp_path / 'f.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'used pyplot'\n"
    )
    env = dict(os.environ, MPLBACKEND="")  # no backend preference needed
    env.pop("MPLBACKEND")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_group_gap_bars_say_when_bars_are_means_over_seeds():
    psi = {"NFT": np.array([0.02, 0.0])}
    one = groups._group_gap_figure(psi, 0.01, group_names=None, counts=None, split="test", max_bars=9, order="psi")
    three = groups._group_gap_figure(psi, 0.01, group_names=None, counts=None, split="test", max_bars=9, order="psi", seeds=3)
    assert "mean over" not in one._suptitle.get_text() and "mean over 3 seeds" in three._suptitle.get_text()
