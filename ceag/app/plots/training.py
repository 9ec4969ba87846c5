"""Fig. 3 and 4: disparity over training and the multipliers' trajectories."""

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
    _as_float,
    _as_float_array,
    _check_int,
    _check_names,
    _check_path,
    _check_split,
    _check_tolerance,
    _epsilon_line,
    _figure_legend,
    _fmt_int,
    _include_epsilon,
    _new_figure,
    _no_data,
    _plural,
    _save_figure,
    _short,
    _styles,
)


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


def _training_figure(histories: Mapping[str, Any], tolerance: float, *, split: str) -> Figure:
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
                epochs,
                mean,
                color=st["color"],
                linewidth=1.6,
                label=label,
                marker=st["marker"] if few else None,
                markersize=3.5,
                zorder=3,
            )
            if n_runs > 1:
                ax.fill_between(epochs, lo, hi, where=np.isfinite(lo), color=st["color"], alpha=0.18, linewidth=0, zorder=2)

    for e, who in sorted(starts.items()):
        same_for_all = len(starts) == 1
        label = f"mitigation starts (epoch {e:g})" + (
            "" if same_for_all else f": {', '.join(sorted({styles[w]['label'] for w in who}))}"
        )
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
) -> Figure:
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
            ax.fill_between(
                x,
                q[0],
                q[4],
                where=np.isfinite(q[0]),
                color="0.88",
                linewidth=0,
                zorder=1,
                label=f"other {n_rest} groups: min–max",
            )
            ax.fill_between(
                x,
                q[1],
                q[3],
                where=np.isfinite(q[1]),
                color="0.72",
                linewidth=0,
                zorder=1,
                label=f"other {n_rest} groups: 10–90%",
            )
            ax.plot(x, q[2], color="0.35", linewidth=1.0, linestyle="--", zorder=2, label=f"other {n_rest} groups: median")
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(top) <= 10 else "tab20"]
    n_colours = 10 if len(top) <= 10 else 20
    linestyles = ("-", "--", "-.", ":")
    for i, g in enumerate(top):
        name = _short(names[g], 24) if names is not None else f"group {g}"
        ax.plot(
            x,
            lam[:, g],
            color=cmap(i % n_colours),
            linewidth=1.6,
            linestyle=linestyles[(i // n_colours) % len(linestyles)],
            marker="o" if few else None,
            markersize=2.5,
            zorder=3,
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
            title = (
                f"Lagrange multipliers over training: the {len(top)} of {n_groups} groups with the largest final "
                + r"$\lambda_g$"
            )
            if len(rest) > MAX_GREY_LINES:
                title += ",\nthe others as quantile bands"
    ax.set_title(title, fontsize=10)
    if legend_below:
        fig.legend(loc="outside lower center", ncols=3, fontsize=7.5, frameon=False)
    elif n_entries:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5, frameon=False)
    return fig


def multiplier_trajectories(
    multipliers: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
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
