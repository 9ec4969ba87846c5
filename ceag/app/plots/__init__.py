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

from ceag.app.plots._common import method_style
from ceag.app.plots.frontier import tradeoff
from ceag.app.plots.groups import group_gap_bars
from ceag.app.plots.training import disparity_over_training, multiplier_trajectories

__all__ = [
    "disparity_over_training",
    "group_gap_bars",
    "method_style",
    "multiplier_trajectories",
    "tradeoff",
]
