"""Figures of the paper, as PNG files: per-group gaps, disparity over training, multipliers, trade-offs.

- :func:`group_gap_bars` (Fig. 1): ψ_g per group, one bar colour per method, ε as a dashed line.
  Above ``max_bars`` groups it shows the ``max_bars`` worst groups of the first method and, in
  a second panel, every group's ψ_g sorted (one curve per method).
- :func:`disparity_over_training` (Fig. 3): Ψ_PW and max ψ_g against the epoch, mean over seeds
  with a min–max band, the start of the mitigation phase marked.
- :func:`multiplier_trajectories` (Fig. 4): λ_g against the epoch; the ``top_k`` groups by final
  λ_g as labelled lines, the others as thin grey lines or, when there are many, a quantile band.
- :func:`tradeoff` (Fig. 2): max ψ_g and Ψ_PW against accuracy across sparsities.
- :func:`method_style`: one stable colour / marker per method (NFT, EL, EL+RB, CEAG, CEAG-batch).

Units: ψ_g, Ψ_PW and max ψ_g are given as fractions (as :class:`ceag.metrics.DisparityReport`
reports them) and drawn in percentage points (pp); accuracies are fractions drawn in %. The
tolerance ε is labelled in the caller's units ("ε = 0.01 (1 pp)").

Every function validates its input (``ValueError`` / ``TypeError`` naming the argument), skips
NaN values (absent groups, dense-phase epochs), writes the PNG atomically (a temporary file in
the destination folder, then ``os.replace``; parent folders are created) and returns its
``Path``. Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas, never
through ``pyplot``: no global state is touched, no GUI backend is needed, and matplotlib is only
imported when a function is called (``import ceag`` stays fast).
"""

from __future__ import annotations

import io
import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ceag._io import atomic_write
from ceag.methods import METHODS

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "disparity_over_training",
    "group_gap_bars",
    "method_style",
    "multiplier_trajectories",
    "tradeoff",
]

SPLITS = ("train", "test")
DPI = 150
PP = 100.0  # fraction -> percentage points

# ---------------------------------------------------------------------------------------
# Method styles
# ---------------------------------------------------------------------------------------

# The registry's methods; key -> (display name, colour, marker).
_KNOWN_METHODS: dict[str, tuple[str, str, str]] = {
    name: (spec.plot_label, spec.color, spec.marker) for name, spec in METHODS.items()
}
_EXTRA_COLOURS = ("#D55E00", "#000000", "#8C564B", "#9467BD", "#7F7F7F", "#BCBD22", "#17BECF", "#E377C2")
_EXTRA_MARKERS = ("P", "X", "*", "h", "<", ">", "p", "d")


def _method_key(name: str) -> str:
    """"EL+RB", "el_rb", "EL-RB" -> "el_rb"; "CEAG (batch)" -> "ceag_batch"."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def method_style(name: str) -> dict[str, Any]:
    """Colour, marker, line style and display label of a method, stable across figures and runs.

    Display names ("NFT", "EL", "EL+RB", "CEAG") and keys ("nft", "el", "el_rb", "ceag",
    "ceag_batch") of the same method get the same style and the same label (the display name).
    Other names get a colour / marker chosen from their CRC32 (not Python's salted ``hash``),
    so they too are the same in every figure and every process, and keep their own label.

    Returns a new dict ``{"color", "marker", "linestyle", "label"}`` the caller may modify.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not name.strip():
        raise ValueError("name must be a non-empty method name")
    key = _method_key(name)
    if key in _KNOWN_METHODS:
        label, colour, marker = _KNOWN_METHODS[key]
    else:
        h = zlib.crc32(key.encode("utf-8"))
        label, colour, marker = name.strip(), _EXTRA_COLOURS[h % len(_EXTRA_COLOURS)], _EXTRA_MARKERS[h % len(_EXTRA_MARKERS)]
    return {"color": colour, "marker": marker, "linestyle": "-", "label": label}


def _styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """method_style for each name, with unknown names that collide in one figure moved apart."""
    styles = {n: method_style(n) for n in names}
    for s in styles.values():
        s["label"] = _escape(s["label"])
    used = {(s["color"], s["marker"]) for n, s in styles.items() if _method_key(n) in _KNOWN_METHODS}
    taken_colours = {c for c, _ in used}
    for n in names:
        if _method_key(n) in _KNOWN_METHODS:
            continue
        s = styles[n]
        i = _EXTRA_COLOURS.index(s["color"])
        for step in range(len(_EXTRA_COLOURS)):
            colour = _EXTRA_COLOURS[(i + step) % len(_EXTRA_COLOURS)]
            if colour not in taken_colours:
                s["color"] = colour
                break
        taken_colours.add(s["color"])
    return styles


# ---------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------


def _as_float_array(x: Any, name: str, ndim: int) -> np.ndarray:
    """A float64 numpy array of ``ndim`` dimensions from a tensor / array / (nested) sequence.

    ``None`` entries become NaN; anything not numeric raises ``TypeError`` naming ``name``.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if x.is_complex():
            raise TypeError(f"{name} must be real, got a complex tensor")
        x = x.double().numpy()
    if isinstance(x, (str, bytes)) or isinstance(x, Mapping):
        raise TypeError(f"{name} must be a sequence, numpy array or tensor of numbers, got {type(x).__name__}")
    try:
        arr = np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must hold real numbers (NaN / None for missing): {e}") from None
    if arr.ndim != ndim:
        shape = "[num_groups]" if ndim == 1 else "[num_epochs, num_groups]"
        raise ValueError(f"{name} must be {ndim}-D {shape}, got shape {arr.shape}")
    return arr


def _as_float(v: Any, name: str) -> float:
    """A float from a number, a 0-d tensor / array, or None (NaN); TypeError otherwise."""
    if v is None:
        return math.nan
    if isinstance(v, bool) or isinstance(v, (str, bytes)):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}") from None


def _check_tolerance(tolerance: Any) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)):
        raise TypeError(f"tolerance must be a real number (ε), got {type(tolerance).__name__}")
    tol = float(tolerance)
    if not (math.isfinite(tol) and tol >= 0.0):
        raise ValueError(f"tolerance must be a finite number >= 0 (ε), got {tolerance}")
    return tol


def _check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if str(path) == "" or p.name == "":
        raise ValueError(f"path must name a file, got {str(path)!r}")
    if p.is_dir():
        raise ValueError(f"path {p} is a directory, expected a .png file name")
    return p


def _check_names(group_names: Any, num_groups: int) -> list[str] | None:
    if group_names is None:
        return None
    if isinstance(group_names, (str, bytes)) or not isinstance(group_names, Sequence):
        raise TypeError(f"group_names must be a sequence of str, got {type(group_names).__name__}")
    if len(group_names) != num_groups:
        raise ValueError(f"group_names must have {num_groups} entries (one per group), got {len(group_names)}")
    return [str(n) for n in group_names]


def _tol_label(tol: float) -> str:
    return f"ε = {tol:g} ({tol * PP:g} pp)"


def _escape(text: str) -> str:
    """User text for matplotlib: a "$" would otherwise start mathtext (and may fail to parse)."""
    return text.replace("$", r"\$")


def _short(name: str, width: int = 18) -> str:
    """At most ``width`` characters, shortened in the middle (the ends tell groups apart)."""
    if len(name) > width:
        head = (width - 1) // 2
        name = name[:head] + "…" + name[len(name) - (width - 1 - head):]
    return _escape(name)


def _plural(n: int, word: str = "group") -> str:
    return f"{_fmt_int(n)} {word}{'' if n == 1 else 's'}"


def _fmt_int(n: int) -> str:
    return f"{n:,}"


# ---------------------------------------------------------------------------------------
# Figure and file helpers
# ---------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _epsilon_line(ax: "Axes", tol: float) -> None:
    ax.axhline(tol * PP, color="black", linestyle="--", linewidth=1.2, label=_tol_label(tol), zorder=3)


def _include_epsilon(ax: "Axes", tol: float) -> None:
    """Widen the y range, after the data are drawn, so that the ε line is never on the frame."""
    lo, hi = ax.get_ylim()
    pad = 0.06 * max(hi - lo, tol * PP, 1e-6)
    y = tol * PP
    ax.set_ylim(min(lo, y - pad), max(hi, y + pad))


def _figure_legend(fig: "Figure", axes: Sequence["Axes"], *, max_cols: int) -> None:
    """One legend below the figure for the entries of ``axes``, each label once."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), max_cols), fontsize=8, frameon=False)


def _no_data(ax: "Axes", text: str = "no finite values to plot") -> None:
    ax.text(0.5, 0.75, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _save_figure(fig: "Figure", path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (:func:`ceag._io.atomic_write`)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": "ceag"})
    finally:
        fig.clear()  # a pyplot-free Figure is not registered anywhere: clearing frees its artists
    return atomic_write(path, buf.getbuffer())


# ---------------------------------------------------------------------------------------
# Fig. 1: per-group excess accuracy gap
# ---------------------------------------------------------------------------------------


def _group_gap_figure(
    psi_by_method: Mapping[str, Any],
    tolerance: float,
    *,
    group_names: Sequence[str] | None,
    counts: Sequence[int] | None,
    split: str,
    max_bars: int,
    order: str,
) -> "Figure":
    if not isinstance(psi_by_method, Mapping):
        raise TypeError(f"psi_by_method must be a mapping method -> ψ_g, got {type(psi_by_method).__name__}")
    if len(psi_by_method) == 0:
        raise ValueError("psi_by_method must hold at least one method")
    tol = _check_tolerance(tolerance)
    split = _check_split(split)
    max_bars = _check_int(max_bars, "max_bars", 1)
    if order not in ("psi", "count", "index"):
        raise ValueError(f"order must be 'psi', 'count' or 'index', got {order!r}")
    methods = list(psi_by_method)
    for m in methods:
        if not isinstance(m, str):
            raise TypeError(f"psi_by_method keys must be method names (str), got {m!r}")
    arrays = [_as_float_array(psi_by_method[m], f"psi_by_method[{m!r}]", 1) for m in methods]
    G = arrays[0].shape[0]
    if G == 0:
        raise ValueError(f"psi_by_method[{methods[0]!r}] is empty: need ψ_g for at least one group")
    for m, a in zip(methods, arrays):
        if a.shape[0] != G:
            raise ValueError(
                f"psi_by_method[{m!r}] has {a.shape[0]} groups but psi_by_method[{methods[0]!r}] has {G}"
            )
    names = _check_names(group_names, G)
    cnt = None
    if counts is not None:
        cnt = _as_float_array(counts, "counts", 1)
        if cnt.shape[0] != G:
            raise ValueError(f"counts must have {G} entries (one per group), got {cnt.shape[0]}")
        if not (np.isfinite(cnt).all() and (cnt >= 0).all()):
            raise ValueError("counts must be finite and >= 0")
    if order == "count" and cnt is None:
        raise ValueError("order='count' needs counts")

    psi = np.stack(arrays)  # [M, G]
    finite = np.isfinite(psi)
    present = finite.any(axis=0)  # groups with a value under some method
    num_present = int(present.sum())
    styles = _styles(methods)
    first_label = styles[methods[0]]["label"]

    # Worst first under the first method; groups it lacks come after, by their worst ψ elsewhere.
    first = np.where(finite[0], psi[0], -np.inf)
    worst_any = np.where(finite, psi, -np.inf).max(axis=0)
    idx = np.flatnonzero(present)
    ranked = idx[np.lexsort((idx, -worst_any[idx], -first[idx]))]
    truncated = num_present > max_bars
    shown = ranked[:max_bars]
    if order == "count":
        shown = shown[np.lexsort((shown, -cnt[shown]))]  # type: ignore[index]
    elif order == "index":
        shown = np.sort(shown)
    n = len(shown)
    M = len(methods)

    # About 0.1 in per bar, 6.5 to 13 in wide (11 in next to the sorted panel).
    width = min(max(1.5 + n * (0.08 + 0.06 * M), 6.5), 11.0 if truncated else 13.0)
    height = 5.0 if (names is not None or cnt is not None) and n > 1 else 4.5
    if truncated:
        fig = _new_figure(width + 4.0, height)
        ax, ax_all = fig.subplots(1, 2, width_ratios=[width, 4.0])
    else:
        fig = _new_figure(width, height)
        ax, ax_all = fig.subplots(), None

    title = f"Excess accuracy gap per group after pruning ({split} split)"
    if truncated:
        title += f"\nleft: the {_fmt_int(n)} worst of {_fmt_int(num_present)} groups under {first_label}"
        title += {"psi": "", "count": ", largest first", "index": ", by group index"}[order]
        title += "; right: all groups, sorted"
    elif order == "count":
        title += "\ngroups ordered by sample count, largest first"
    elif n > 1 and order == "psi":
        title += f"\ngroups ordered by {first_label} " + r"$\psi_g$" + ", worst first"
    if num_present < G:
        title += f" ({_plural(G - num_present)} without data omitted)"
    fig.suptitle(title, fontsize=10)

    if n == 0:
        _no_data(ax, r"no group has a finite $\psi_g$")
    group_w = 0.8
    w = group_w / M
    x = np.arange(n)
    for j, m in enumerate(methods if n else ()):
        st = styles[m]
        vals = psi[j, shown]
        ok = np.isfinite(vals)
        above = int((psi[j][finite[j]] > tol).sum())
        label = f"{st['label']}: {above} of {_plural(int(finite[j].sum()))} above ε"
        ax.bar(
            x[ok] - group_w / 2 + (j + 0.5) * w,
            vals[ok] * PP,
            width=w,
            color=st["color"],
            edgecolor="white" if n * M <= 80 else "none",
            linewidth=0.4,
            label=label,
            zorder=2,
        )
    ax.axhline(0.0, color="0.5", linewidth=0.8, zorder=1)
    _epsilon_line(ax, tol)
    _include_epsilon(ax, tol)
    ax.set_ylabel(r"$\psi_g = \Delta A_g - \Delta A$ (percentage points)")
    ax.grid(axis="y", color="0.9", zorder=0)
    ax.set_axisbelow(True)
    ax.set_xlim(-0.6, max(n, 1) - 0.4)

    # Tick labels: the group's name (or index) and, when known, its sample count.
    def tick(g: int) -> str:
        s = _short(names[g]) if names is not None else str(g)
        if cnt is not None:
            s += f" (n={int(cnt[g]):,})"
        return s

    step = max(1, math.ceil(n / 60))
    ticks = x[::step]
    ax.set_xticks(ticks, [tick(int(shown[i])) for i in ticks])
    labels_len = max((len(tick(int(g))) for g in shown), default=1)
    rotate = n > 1 and (labels_len * n > 60)
    ax.tick_params(axis="x", labelsize=8 if n <= 30 else 6.5, labelrotation=90 if rotate else 0, length=2)
    ax.set_xlabel("group" + (" (every {}th shown)".format(step) if step > 1 else "") + (" (n = samples)" if cnt is not None else ""))
    ax.legend(loc="upper right" if order == "psi" else "best", fontsize=8, framealpha=0.9)

    if ax_all is not None:
        for j, m in enumerate(methods):
            st = styles[m]
            v = np.sort(psi[j][finite[j]])[::-1]
            ax_all.plot(np.arange(1, len(v) + 1), v * PP, color=st["color"], linewidth=1.4, label=st["label"])
        ax_all.axvline(n + 0.5, color="0.5", linestyle=":", linewidth=1.0, label=f"{_fmt_int(n)} shown left")
        ax_all.axhline(0.0, color="0.5", linewidth=0.8)
        _epsilon_line(ax_all, tol)
        _include_epsilon(ax_all, tol)
        ax_all.set_xlabel("rank of the group (1 = worst)")
        ax_all.set_ylabel(r"$\psi_g$ (percentage points)")
        ax_all.set_title(f"all {_fmt_int(num_present)} groups, sorted per method", fontsize=9)
        ax_all.grid(color="0.9")
        ax_all.legend(fontsize=7.5, loc="upper right")
    return fig


def group_gap_bars(
    psi_by_method: Mapping[str, "Sequence[float] | np.ndarray | torch.Tensor"],
    tolerance: float,
    path: str | os.PathLike,
    *,
    group_names: Sequence[str] | None = None,
    counts: Sequence[int] | None = None,
    split: str = "train",
    max_bars: int = 60,
    order: str = "psi",
) -> Path:
    """Fig. 1: bars of the excess accuracy gap ψ_g per group, one colour per method, ε as a line.

    Args:
        psi_by_method: method name -> ψ_g of every group ([G] floats, fractions, e.g.
            ``DisparityReport.psi``), all of the same length G. NaN marks an absent group:
            a group NaN under every method is dropped; a NaN under one method draws no bar.
        tolerance: ε >= 0, drawn as a dashed line.
        path: the PNG to write (parent folders are created, an existing file is replaced).
        group_names: a name per group for the tick labels (default: the group index).
        counts: samples per group, appended to the tick labels; needed for ``order="count"``.
        split: "train" or "test", for the title.
        max_bars: at most this many groups get bars. With more groups, the ``max_bars``
            groups worst under the first method are shown (the title says so) and a second
            panel draws every group's ψ_g sorted, one curve per method.
        order: bar order: "psi" (first method's ψ_g, worst first; default), "count" (largest
            group first) or "index" (group index).

    The legend gives, per method, how many groups exceed ε. Returns ``Path(path)``.
    """
    p = _check_path(path)
    fig = _group_gap_figure(
        psi_by_method, tolerance, group_names=group_names, counts=counts, split=split, max_bars=max_bars, order=order
    )
    return _save_figure(fig, p)


# ---------------------------------------------------------------------------------------
# Fig. 3: disparity over training
# ---------------------------------------------------------------------------------------


def _aggregate(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over axis 0 ignoring NaN, NaN where no run has a value (no warnings)."""
    ok = np.isfinite(values)
    k = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, values, 0.0).sum(axis=0) / k
    lo = np.where(ok, values, np.inf).min(axis=0)
    hi = np.where(ok, values, -np.inf).max(axis=0)
    none = k == 0
    mean[none] = lo[none] = hi[none] = np.nan
    return mean, lo, hi


def _training_figure(histories: Mapping[str, Any], tolerance: float, *, split: str) -> "Figure":
    if not isinstance(histories, Mapping):
        raise TypeError(f"histories must be a mapping method -> list of runs, got {type(histories).__name__}")
    if len(histories) == 0:
        raise ValueError("histories must hold at least one method")
    tol = _check_tolerance(tolerance)
    split = _check_split(split)
    keys = (f"{split}_psi_pw", f"{split}_max_psi")
    methods = list(histories)
    series: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}
    starts: dict[int, list[str]] = {}
    key_seen = False
    for m in methods:
        if not isinstance(m, str):
            raise TypeError(f"histories keys must be method names (str), got {m!r}")
        runs = histories[m]
        if isinstance(runs, (str, bytes, Mapping)) or not isinstance(runs, Sequence):
            raise TypeError(f"histories[{m!r}] must be a list of runs (one per seed), got {type(runs).__name__}")
        if len(runs) == 0:
            raise ValueError(f"histories[{m!r}] holds no runs")
        per_run: list[dict[float, tuple[float, float]]] = []
        for r, run in enumerate(runs):
            if isinstance(run, (str, bytes, Mapping)) or not isinstance(run, Sequence):
                raise TypeError(f"histories[{m!r}][{r}] must be a list of per-epoch rows, got {type(run).__name__}")
            values: dict[float, tuple[float, float]] = {}
            mitigation = None
            for i, row in enumerate(run):
                where = f"histories[{m!r}][{r}][{i}]"
                if not isinstance(row, Mapping):
                    raise TypeError(f"{where} must be a mapping (a history row), got {type(row).__name__}")
                epoch = _as_float(row.get("epoch", i), f"{where}['epoch']")
                if not math.isfinite(epoch):
                    raise ValueError(f"{where}['epoch'] must be finite, got {epoch}")
                key_seen = key_seen or any(k in row for k in keys)
                values[epoch] = tuple(_as_float(row.get(k), f"{where}[{k!r}]") for k in keys)  # type: ignore[assignment]
                if mitigation is None and row.get("phase") == "mitigation":
                    mitigation = epoch
            per_run.append(values)
            if mitigation is not None:
                starts.setdefault(int(mitigation) if float(mitigation).is_integer() else mitigation, []).append(m)
        epochs = np.array(sorted(set().union(*per_run)), dtype=np.float64)
        pos = {e: i for i, e in enumerate(epochs)}
        vals = np.full((len(per_run), len(epochs), 2), np.nan)
        for r, values in enumerate(per_run):
            for e, v in values.items():
                vals[r, pos[e]] = v
        series[m] = (epochs, vals[..., 0], vals[..., 1], len(runs))
    if not key_seen:
        raise ValueError(f"no history row has {keys[0]!r} or {keys[1]!r}: was split={split!r} evaluated?")

    fig = _new_figure(11.0, 4.6)
    ax_pw, ax_max = fig.subplots(1, 2, sharex=True)
    styles = _styles(methods)
    from matplotlib.ticker import MaxNLocator

    any_finite = False
    all_epochs: list[float] = []
    finite_epochs: list[float] = []
    for m in methods:
        epochs, pw, mx, n_runs = series[m]
        all_epochs.extend(epochs.tolist())
        finite_epochs.extend(epochs[np.isfinite(pw).any(axis=0) | np.isfinite(mx).any(axis=0)].tolist())
        st = styles[m]
        label = st["label"] + (f" (mean of {n_runs} seeds, band min–max)" if n_runs > 1 else "")
        for ax, v in ((ax_pw, pw), (ax_max, mx)):
            mean, lo, hi = _aggregate(v * PP)
            any_finite = any_finite or bool(np.isfinite(mean).any())
            few = np.isfinite(mean).sum() <= 40
            ax.plot(
                epochs, mean, color=st["color"], linewidth=1.6, label=label,
                marker=st["marker"] if few else None, markersize=3.5, zorder=3,
            )
            if n_runs > 1:
                ax.fill_between(epochs, lo, hi, where=np.isfinite(lo), color=st["color"], alpha=0.18, linewidth=0, zorder=2)

    for e, who in sorted(starts.items()):
        same_for_all = len(starts) == 1
        label = f"mitigation starts (epoch {e:g})" + ("" if same_for_all else f": {', '.join(sorted({styles[w]['label'] for w in who}))}")
        for ax in (ax_pw, ax_max):
            ax.axvline(e - 0.5, color="0.35", linestyle=":", linewidth=1.3, label=label, zorder=1)
    _epsilon_line(ax_max, tol)
    ax_pw.set_title(r"spread: $\Psi_{\mathrm{PW}} = \mathrm{max}_g\,\psi_g - \mathrm{min}_g\,\psi_g$", fontsize=10)
    ax_max.set_title(r"worst group: $\mathrm{max}_g\,\psi_g$", fontsize=10)
    ax_pw.set_ylabel(r"$\Psi_{\mathrm{PW}}$ (percentage points)")
    ax_max.set_ylabel(r"$\mathrm{max}_g\,\psi_g$ (percentage points)")
    # x range: the epochs with values (dense epochs have none) and the mitigation start.
    span = (finite_epochs or all_epochs) + [e - 0.5 for e in starts]
    if span:
        ax_max.set_xlim(min(span) - 0.5, max(span) + 0.5)
    if not any_finite:
        ax_pw.set_ylim(0.0, max(2 * tol * PP, 1.0))
        ax_max.set_ylim(0.0, max(2 * tol * PP, 1.0))
    _include_epsilon(ax_max, tol)
    for ax in (ax_pw, ax_max):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(color="0.9")
        if not any_finite:
            _no_data(ax, f"no finite {split} disparity yet (dense epochs only)")
    fig.suptitle(f"Disparity during training ({split} split)", fontsize=11)
    _figure_legend(fig, (ax_pw, ax_max), max_cols=3)
    return fig


def disparity_over_training(
    histories: Mapping[str, Sequence[Sequence[Mapping]]],
    tolerance: float,
    path: str | os.PathLike,
    *,
    split: str = "train",
) -> Path:
    """Fig. 3: Ψ_PW and max ψ_g against the epoch, one line per method, ε on the max ψ panel.

    Args:
        histories: method name -> runs (one per seed); a run is the trainer's history, a list
            of per-epoch rows with "epoch", "phase" ("dense" | "pruning" | "mitigation"),
            f"{split}_psi_pw" and f"{split}_max_psi" (fractions; NaN / None / missing in dense
            epochs). Runs are aligned by "epoch" (a row without one gets its position).
        tolerance: ε >= 0, drawn dashed on the max ψ_g panel.
        path: the PNG to write.
        split: "train" or "test".

    Several seeds: the line is the mean over the seeds that have a value at that epoch, with
    a shaded min–max band. The start of the mitigation phase (the first row whose phase is
    "mitigation") is a dotted vertical line just before that epoch; runs that start it at
    different epochs get one line each. ``ValueError`` if no row has the split's keys at all.
    """
    p = _check_path(path)
    fig = _training_figure(histories, tolerance, split=split)
    return _save_figure(fig, p)


# ---------------------------------------------------------------------------------------
# Fig. 4: Lagrange multipliers
# ---------------------------------------------------------------------------------------

MAX_GREY_LINES = 150  # above this many other groups, draw a quantile band instead of lines


def _band(values: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Per-row quantiles over the finite entries ([E, G] -> [len(qs), E]), NaN for empty rows."""
    out = np.full((len(qs), values.shape[0]), np.nan)
    for i, row in enumerate(values):
        row = row[np.isfinite(row)]
        if row.size:
            out[:, i] = np.quantile(row, qs)
    return out


def _multiplier_figure(
    multipliers: Any,
    *,
    epochs: Sequence[int] | None,
    group_names: Sequence[str] | None,
    top_k: int,
    title: str | None,
) -> "Figure":
    lam = _as_float_array(multipliers, "multipliers", 2)
    E, G = lam.shape
    if E == 0 or G == 0:
        raise ValueError(f"multipliers must be [num_epochs >= 1, num_groups >= 1], got shape {lam.shape}")
    top_k = _check_int(top_k, "top_k", 0)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
    if epochs is None:
        x = np.arange(E, dtype=np.float64)
    else:
        x = _as_float_array(epochs, "epochs", 1)
        if x.shape[0] != E:
            raise ValueError(f"epochs must have {E} entries (one per row of multipliers), got {x.shape[0]}")
        if not np.isfinite(x).all():
            raise ValueError("epochs must be finite")
    names = _check_names(group_names, G)

    ok = np.isfinite(lam)
    has = ok.any(axis=0)
    # Final value = the last finite λ_g of the group; ties (e.g. many zeros) broken by the max.
    last_row = np.where(ok, np.arange(E)[:, None], -1).max(axis=0)
    final = np.where(has, lam[np.maximum(last_row, 0), np.arange(G)], -np.inf)
    peak = np.where(ok, lam, -np.inf).max(axis=0)
    idx = np.flatnonzero(has)
    ranked = idx[np.lexsort((idx, -peak[idx], -final[idx]))]
    top = ranked[:top_k]
    rest = ranked[top_k:]

    # Legend: beside the axes up to 12 entries, below them (three columns) beyond.
    n_entries = len(top) + (0 if not len(rest) else 1 if len(rest) <= MAX_GREY_LINES else 3)
    legend_below = n_entries > 12
    fig = _new_figure(10.0, 5.0 + (0.2 * math.ceil(n_entries / 3) if legend_below else 0.0))
    ax = fig.subplots()
    few = E <= 40
    if len(rest):
        if len(rest) <= MAX_GREY_LINES:
            lines = ax.plot(x, lam[:, rest], color="0.6", linewidth=0.6, alpha=0.6, zorder=1)
            lines[0].set_label(f"other {_fmt_int(len(rest))} group{'s' if len(rest) > 1 else ''}")
        else:
            q = _band(lam[:, rest], (0.0, 0.1, 0.5, 0.9, 1.0))
            n_rest = _fmt_int(len(rest))
            ax.fill_between(x, q[0], q[4], where=np.isfinite(q[0]), color="0.88", linewidth=0, zorder=1,
                            label=f"other {n_rest} groups: min–max")
            ax.fill_between(x, q[1], q[3], where=np.isfinite(q[1]), color="0.72", linewidth=0, zorder=1,
                            label=f"other {n_rest} groups: 10–90%")
            ax.plot(x, q[2], color="0.35", linewidth=1.0, linestyle="--", zorder=2, label=f"other {n_rest} groups: median")
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(top) <= 10 else "tab20"]
    n_colours = 10 if len(top) <= 10 else 20
    linestyles = ("-", "--", "-.", ":")
    for i, g in enumerate(top):
        name = _short(names[g], 24) if names is not None else f"group {g}"
        ax.plot(
            x, lam[:, g], color=cmap(i % n_colours), linewidth=1.6,
            linestyle=linestyles[(i // n_colours) % len(linestyles)],
            marker="o" if few else None, markersize=2.5, zorder=3,
            label=f"{name} (final " + r"$\lambda$" + f" = {final[g]:.3g})",
        )
    if len(idx) == 0:
        _no_data(ax, "no finite multiplier")
    ax.axhline(0.0, color="0.5", linewidth=0.8, zorder=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"$\lambda_g$ (Lagrange multiplier, dimensionless)")
    from matplotlib.ticker import MaxNLocator

    if np.all(np.equal(np.mod(x, 1), 0)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(color="0.92")
    if title is None:
        n_groups = _fmt_int(len(idx))
        if len(top) == 0:
            title = f"Lagrange multipliers over training ({_plural(len(idx))})"
        elif len(top) >= len(idx):
            title = "Lagrange multipliers over training: " + ("the only group" if len(idx) == 1 else f"all {n_groups} groups")
        else:
            title = f"Lagrange multipliers over training: the {len(top)} of {n_groups} groups with the largest final " + r"$\lambda_g$"
            if len(rest) > MAX_GREY_LINES:
                title += ",\nthe others as quantile bands"
    ax.set_title(title, fontsize=10)
    if legend_below:
        fig.legend(loc="outside lower center", ncols=3, fontsize=7.5, frameon=False)
    elif n_entries:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5, frameon=False)
    return fig


def multiplier_trajectories(
    multipliers: "np.ndarray | torch.Tensor | Sequence[Sequence[float]]",
    path: str | os.PathLike,
    *,
    epochs: Sequence[int] | None = None,
    group_names: Sequence[str] | None = None,
    top_k: int = 10,
    title: str | None = None,
) -> Path:
    """Fig. 4: the Lagrange multipliers λ_g against the epoch.

    Args:
        multipliers: [num_epochs, G], λ_g at the end of each epoch (NaN where unknown, e.g.
            dense epochs; a group NaN throughout is left out).
        path: the PNG to write.
        epochs: x value of each row (default 0 .. num_epochs − 1).
        group_names: a name per group for the legend (default "group <index>").
        top_k: this many groups with the largest final λ_g (ties broken by their largest λ_g)
            are drawn as coloured, labelled lines; the other groups as thin grey lines or,
            above 150 of them, as a median line with 10–90% and min–max bands.
        title: replaces the default title.
    """
    p = _check_path(path)
    fig = _multiplier_figure(multipliers, epochs=epochs, group_names=group_names, top_k=top_k, title=title)
    return _save_figure(fig, p)


# ---------------------------------------------------------------------------------------
# Fig. 2: disparity vs accuracy across sparsities
# ---------------------------------------------------------------------------------------

_REQUIRED_POINT_KEYS = ("method", "sparsity", "accuracy", "max_psi", "psi_pw")
_OFFSETS = ((5, 5), (5, -11), (-24, 5), (-24, -11))


def _tradeoff_figure(points: Sequence[Mapping], tolerance: float, *, split: str) -> "Figure":
    if isinstance(points, (str, bytes, Mapping)) or not isinstance(points, Sequence):
        raise TypeError(f"points must be a sequence of mappings, got {type(points).__name__}")
    if len(points) == 0:
        raise ValueError("points must hold at least one point")
    tol = _check_tolerance(tolerance)
    split = _check_split(split)
    by_method: dict[str, list[dict[str, float]]] = {}
    for i, pt in enumerate(points):
        where = f"points[{i}]"
        if not isinstance(pt, Mapping):
            raise TypeError(f"{where} must be a mapping, got {type(pt).__name__}")
        missing = [k for k in _REQUIRED_POINT_KEYS if k not in pt]
        if missing:
            raise ValueError(f"{where} misses {missing}")
        method = pt["method"]
        if not isinstance(method, str) or not method.strip():
            raise TypeError(f"{where}['method'] must be a non-empty str, got {method!r}")
        row = {k: _as_float(pt[k], f"{where}[{k!r}]") for k in _REQUIRED_POINT_KEYS[1:]}
        if not (math.isfinite(row["sparsity"]) and 0.0 <= row["sparsity"] <= 1.0):
            raise ValueError(f"{where}['sparsity'] must be a fraction in [0, 1], got {row['sparsity']}")
        if math.isfinite(row["accuracy"]) and not 0.0 <= row["accuracy"] <= 1.0:
            raise ValueError(f"{where}['accuracy'] must be a fraction in [0, 1], got {row['accuracy']}")
        for k in ("accuracy_std", "max_psi_std", "psi_pw_std"):
            v = _as_float(pt.get(k), f"{where}[{k!r}]")
            if v < 0:
                raise ValueError(f"{where}[{k!r}] must be >= 0, got {v}")
            row[k] = v
        by_method.setdefault(method, []).append(row)

    fig = _new_figure(11.0, 4.9)
    ax_max, ax_pw = fig.subplots(1, 2, sharex=True)
    methods = list(by_method)
    styles = _styles(methods)
    any_finite = {ax_max: False, ax_pw: False}
    for j, m in enumerate(methods):
        st = styles[m]
        pts = sorted(by_method[m], key=lambda r: r["sparsity"])
        for ax, key in ((ax_max, "max_psi"), (ax_pw, "psi_pw")):
            keep = [r for r in pts if math.isfinite(r["accuracy"]) and math.isfinite(r[key])]
            if not keep:
                ax.plot([], [], color=st["color"], marker=st["marker"], label=st["label"])  # legend entry only
                continue
            any_finite[ax] = True
            acc = np.array([r["accuracy"] for r in keep]) * PP
            val = np.array([r[key] for r in keep]) * PP

            def err(k: str) -> np.ndarray | None:
                e = np.array([r[k] for r in keep]) * PP
                return None if not np.isfinite(e).any() else np.nan_to_num(e, nan=0.0)

            ax.errorbar(
                acc, val, xerr=err("accuracy_std"), yerr=err(f"{key}_std"),
                color=st["color"], marker=st["marker"], markersize=6, linewidth=1.5,
                elinewidth=0.9, capsize=2.5, label=st["label"], zorder=3,
            )
            dx, dy = _OFFSETS[j % len(_OFFSETS)]
            for a, v, r in zip(acc, val, keep):
                ax.annotate(
                    f"{round(r['sparsity'] * 100, 1):g}%", (a, v), xytext=(dx, dy), textcoords="offset points",
                    fontsize=7, color=st["color"], zorder=4,
                )
    _epsilon_line(ax_max, tol)
    ax_max.set_title(r"worst group: $\mathrm{max}_g\,\psi_g$", fontsize=10)
    ax_pw.set_title(r"spread: $\Psi_{\mathrm{PW}} = \mathrm{max}_g\,\psi_g - \mathrm{min}_g\,\psi_g$", fontsize=10)
    ax_max.set_ylabel(r"$\mathrm{max}_g\,\psi_g$ (percentage points)")
    ax_pw.set_ylabel(r"$\Psi_{\mathrm{PW}}$ (percentage points)")
    for ax in (ax_max, ax_pw):
        ax.set_xlabel(f"{split} accuracy (%)")
        ax.grid(color="0.9")
        ax.margins(x=0.12, y=0.12)
        if not any_finite[ax]:
            _no_data(ax)
    _include_epsilon(ax_max, tol)
    fig.suptitle(f"Disparity vs accuracy across sparsities ({split} split; labels: sparsity)", fontsize=11)
    _figure_legend(fig, (ax_max, ax_pw), max_cols=6)
    return fig


def tradeoff(points: Sequence[Mapping], tolerance: float, path: str | os.PathLike, *, split: str = "test") -> Path:
    """Fig. 2: disparity against accuracy across sparsities, one marker / colour per method.

    Args:
        points: one mapping per (method, sparsity): "method" (str), "sparsity" (fraction in
            [0, 1]), "accuracy" (fraction), "max_psi" and "psi_pw" (fractions; NaN skips the
            point in that panel), and optionally "accuracy_std", "max_psi_std", "psi_pw_std"
            (error bars, e.g. over seeds).
        tolerance: ε >= 0, dashed on the max ψ_g panel.
        path: the PNG to write.
        split: "train" or "test" (axis labels and title).

    Left panel max ψ_g against accuracy, right panel Ψ_PW against accuracy; a method's
    points are joined in order of sparsity and labelled with it ("90%").
    """
    p = _check_path(path)
    fig = _tradeoff_figure(points, tolerance, split=split)
    return _save_figure(fig, p)
