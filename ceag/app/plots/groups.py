"""Fig. 1: ψ_g per group, one bar colour per method (:func:`group_gap_bars`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from matplotlib.figure import Figure

from ceag.app.plots._common import (
    PP,
    _as_float_array,
    _check_int,
    _check_names,
    _check_path,
    _check_split,
    _check_tolerance,
    _epsilon_line,
    _fmt_int,
    _include_epsilon,
    _new_figure,
    _no_data,
    _plural,
    _save_figure,
    _short,
    _styles,
)


def _group_gap_figure(
    psi_by_method: Mapping[str, Any],
    tolerance: float,
    *,
    group_names: Sequence[str] | None,
    counts: Sequence[int] | None,
    split: str,
    max_bars: int,
    order: str,
    intervals: Mapping[str, Any] | None = None,
    seeds: int = 1,
) -> Figure:
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
            raise ValueError(f"psi_by_method[{m!r}] has {a.shape[0]} groups but psi_by_method[{methods[0]!r}] has {G}")
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
    bounds = _check_intervals(intervals, methods, G)

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

    title = f"Excess accuracy gap per group after pruning ({split} split"
    title += f"; ψ_g and the counts in the legend: mean over {seeds} seeds)" if seeds > 1 else ")"
    if truncated:
        title += f"\nleft: the {_fmt_int(n)} worst of {_fmt_int(num_present)} groups under {first_label}"
        title += {"psi": "", "count": ", largest first", "index": ", by group index"}[order]
        title += "; right: all groups, sorted"
    elif order == "count":
        title += "\ngroups ordered by sample count, largest first"
    elif n > 1 and order == "psi":
        title += f"\ngroups ordered by {first_label} " + r"$\psi_g$" + ", worst first"
    if num_present < G:
        title += f" ({_plural(G - num_present)} omitted: too few samples to report)"
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
        if m in bounds:
            _verdict_bars(ax, x - group_w / 2 + (j + 0.5) * w, vals, bounds[m][0][shown], bounds[m][1][shown], tol)
    if bounds and n:
        for verdict, colour in _VERDICT_COLOURS.items():
            ax.errorbar([], [], yerr=[], color=colour, linewidth=1.2, label=f"95% interval: {verdict}")
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
    ax.set_xlabel("group" + (f" (every {step}th shown)" if step > 1 else "") + (" (n = samples)" if cnt is not None else ""))
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


#: Colour of a group's interval by its verdict (bars keep the method's colour).
_VERDICT_COLOURS = {"certified within ε": "#1a9850", "violates": "#d73027", "too small to tell": "0.45"}


def _check_intervals(intervals: Mapping[str, Any] | None, methods: list[str], num_groups: int) -> dict[str, tuple]:
    """method -> (lower [G], upper [G]) as float arrays (fractions); {} when not given."""
    if intervals is None:
        return {}
    if not isinstance(intervals, Mapping):
        raise TypeError(f"intervals must be a mapping method -> (lower, upper), got {type(intervals).__name__}")
    out = {}
    for m, pair in intervals.items():
        if m not in methods:
            raise ValueError(f"intervals[{m!r}]: no such method in psi_by_method ({', '.join(methods)})")
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"intervals[{m!r}] must be a (lower, upper) pair")
        lo, hi = (_as_float_array(v, f"intervals[{m!r}]", 1) for v in pair)
        if lo.shape[0] != num_groups or hi.shape[0] != num_groups:
            raise ValueError(f"intervals[{m!r}] must have {num_groups} entries per bound (one per group)")
        out[m] = (lo, hi)
    return out


def _verdict_bars(ax: Any, x: np.ndarray, psi: np.ndarray, lo: np.ndarray, hi: np.ndarray, tol: float) -> None:
    """Each group's interval as an error bar coloured by its verdict."""
    ok = np.isfinite(psi) & np.isfinite(lo) & np.isfinite(hi)
    verdicts = np.where(hi <= tol, 0, np.where(lo > tol, 1, 2))
    for code, colour in enumerate(_VERDICT_COLOURS.values()):
        sel = ok & (verdicts == code)
        if sel.any():
            err = np.stack([psi[sel] - lo[sel], hi[sel] - psi[sel]]).clip(min=0) * PP
            ax.errorbar(x[sel], psi[sel] * PP, yerr=err, fmt="none", ecolor=colour, elinewidth=1.2, capsize=2, zorder=3)


def group_gap_bars(
    psi_by_method: Mapping[str, Sequence[float] | np.ndarray | torch.Tensor],
    tolerance: float,
    path: str | os.PathLike,
    *,
    group_names: Sequence[str] | None = None,
    counts: Sequence[int] | None = None,
    split: str = "train",
    max_bars: int = 60,
    order: str = "psi",
    intervals: Mapping[str, Any] | None = None,
    seeds: int = 1,
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
        intervals: method -> (lower [G], upper [G]) of ψ_g (e.g. ``DisparityReport.psi_ci``):
            drawn as error bars coloured by the verdict (green: certified within ε, red:
            violates, grey: too small to tell).
        seeds: how many seeds ``psi_by_method`` averages (the title says so when > 1).

    The legend gives, per method, how many groups exceed ε. Returns ``Path(path)``.
    """
    p = _check_path(path)
    fig = _group_gap_figure(
        psi_by_method,
        tolerance,
        group_names=group_names,
        counts=counts,
        split=split,
        max_bars=max_bars,
        order=order,
        intervals=intervals,
        seeds=seeds,
    )
    return _save_figure(fig, p)


# ---------------------------------------------------------------------------------------
# Fig. 3: disparity over training
# ---------------------------------------------------------------------------------------
