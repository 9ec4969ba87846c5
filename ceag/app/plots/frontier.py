"""Fig. 2: max ψ_g and Ψ_PW against accuracy across sparsities (:func:`tradeoff`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

from ceag.app.plots._common import (
    PP,
    _as_float,
    _check_path,
    _check_split,
    _check_tolerance,
    _epsilon_line,
    _figure_legend,
    _include_epsilon,
    _new_figure,
    _no_data,
    _save_figure,
    _styles,
)

_REQUIRED_POINT_KEYS = ("method", "sparsity", "accuracy", "max_psi", "psi_pw")
_OFFSETS = ((5, 5), (5, -11), (-24, 5), (-24, -11))


def _tradeoff_figure(points: Sequence[Mapping], tolerance: float, *, split: str) -> Figure:
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
                acc,
                val,
                xerr=err("accuracy_std"),
                yerr=err(f"{key}_std"),
                color=st["color"],
                marker=st["marker"],
                markersize=6,
                linewidth=1.5,
                elinewidth=0.9,
                capsize=2.5,
                label=st["label"],
                zorder=3,
            )
            dx, dy = _OFFSETS[j % len(_OFFSETS)]
            for a, v, r in zip(acc, val, keep):
                ax.annotate(
                    f"{round(r['sparsity'] * 100, 1):g}%",
                    (a, v),
                    xytext=(dx, dy),
                    textcoords="offset points",
                    fontsize=7,
                    color=st["color"],
                    zorder=4,
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
