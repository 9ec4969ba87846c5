"""What every figure shares: method styles, input checks, figure set-up and the atomic PNG writer."""

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
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
    """ "EL+RB", "el_rb", "EL-RB" -> "el_rb"; "CEAG (batch)" -> "ceag_batch"."""
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


def _short(name: str, width: int = 24) -> str:
    """At most ``width`` characters. An intersection ("Asian-Pac-Islander/Female/30-44")
    keeps every attribute and shortens the long ones at a word break ("Asian-Pac…/Female/30-44");
    anything else is shortened in the middle (the ends tell groups apart)."""
    parts = name.split("/")
    if len(name) > width and len(parts) > 1:
        budget = width - (len(parts) - 1)  # characters left after the slashes
        long = [i for i, q in enumerate(parts) if len(q) * len(parts) > budget]  # over an even share
        room = (budget - sum(len(q) for i, q in enumerate(parts) if i not in long)) // max(len(long), 1)
        name = "/".join(_cut_words(q, max(room, 2)) if i in long and len(q) > room else q for i, q in enumerate(parts))
    if len(name) > width:
        head = (width - 1) // 2
        name = name[:head] + "…" + name[len(name) - (width - 1 - head) :]
    return _escape(name)


def _cut_words(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with "…", at the last word break that fits if any."""
    head = text[: width - 1]
    k = max(head.rfind(sep) for sep in ("-", " ", "_"))
    return (head[:k] if k >= len(head) // 2 else head) + "…"  # a break that keeps at least half


def _plural(n: int, word: str = "group") -> str:
    return f"{_fmt_int(n)} {word}{'' if n == 1 else 's'}"


def _fmt_int(n: int) -> str:
    return f"{n:,}"


# ---------------------------------------------------------------------------------------
# Figure and file helpers
# ---------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _epsilon_line(ax: Axes, tol: float) -> None:
    ax.axhline(tol * PP, color="black", linestyle="--", linewidth=1.2, label=_tol_label(tol), zorder=3)


def _include_epsilon(ax: Axes, tol: float) -> None:
    """Widen the y range, after the data are drawn, so that the ε line is never on the frame."""
    lo, hi = ax.get_ylim()
    pad = 0.06 * max(hi - lo, tol * PP, 1e-6)
    y = tol * PP
    ax.set_ylim(min(lo, y - pad), max(hi, y + pad))


def _figure_legend(fig: Figure, axes: Sequence[Axes], *, max_cols: int) -> None:
    """One legend below the figure for the entries of ``axes``, each label once."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), max_cols), fontsize=8, frameon=False)


def _no_data(ax: Axes, text: str = "no finite values to plot") -> None:
    ax.text(0.5, 0.75, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _save_figure(fig: Figure, path: Path) -> Path:
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
