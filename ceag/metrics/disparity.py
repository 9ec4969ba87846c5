"""The disparity pruning causes: ψ_g, Ψ_PW, max ψ, with intervals that certify groups within ε."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor

from ceag.metrics.stats import GroupStats

STATUS_WITHIN = "within ε"
STATUS_VIOLATES = "violates"
STATUS_UNKNOWN = "too small to tell"
STATUS_ABSENT = "absent"


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(correct: Tensor, count: Tensor, confidence: float = 0.95) -> tuple[Tensor, Tensor]:
    """Wilson score interval for a binomial proportion (float64 lower, upper; NaN if count 0).

    p̂ = x/n, z the two-sided normal quantile: centre (p̂ + z²/2n) / (1 + z²/n), half-width
    z / (1 + z²/n) · sqrt(p̂(1−p̂)/n + z²/4n²). E.g. 8/10 at 95%: (0.4902, 0.9433).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    correct, count = torch.as_tensor(correct), torch.as_tensor(count)
    try:
        torch.broadcast_shapes(correct.shape, count.shape)
    except RuntimeError as exc:
        raise ValueError(f"correct {tuple(correct.shape)} and count {tuple(count.shape)} do not broadcast") from exc
    if bool(((correct < 0) | (correct > count)).any()):
        raise ValueError("correct must satisfy 0 <= correct <= count")
    z = _z(confidence)
    n = count.to(torch.float64)
    safe_n = n.clamp_min(1)
    p = correct.to(torch.float64) / safe_n
    denom = 1 + z * z / safe_n
    centre = (p + z * z / (2 * safe_n)) / denom
    half = z / denom * torch.sqrt(p * (1 - p) / safe_n + z * z / (4 * safe_n * safe_n))
    lo = (centre - half).clamp(0, 1)
    hi = (centre + half).clamp(0, 1)
    empty = n <= 0
    return lo.masked_fill(empty, math.nan), hi.masked_fill(empty, math.nan)


# ---------------------------------------------------------------------------------------
# Disparity
# ---------------------------------------------------------------------------------------


def _real(name: str, value: Any) -> float:
    """``float(value)`` for a real number (or a one-element tensor), else a TypeError naming it."""
    if not isinstance(value, bool) and isinstance(value, (numbers.Real, Tensor)):
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"{name} must be a real number, got {value!r}")


@dataclass
class DisparityReport:
    """Per-group and summary disparity of a sparse model against its dense original.

    Per-group tensors are float64 [G] on the CPU, NaN for excluded groups (``included``
    False): ``dense_accuracy``, ``sparse_accuracy``, ``accuracy_gap`` (ΔA_g), ``psi`` (ψ_g),
    their interval bounds, and ``status`` (a list of strings).
    """

    tolerance: float
    confidence: float
    min_count: int
    count: Tensor
    dense_count: Tensor
    included: Tensor
    dense_accuracy: Tensor
    sparse_accuracy: Tensor
    dense_accuracy_ci: tuple[Tensor, Tensor]
    sparse_accuracy_ci: tuple[Tensor, Tensor]
    accuracy_gap: Tensor
    psi: Tensor
    psi_ci: tuple[Tensor, Tensor]
    status: list[str]
    overall_dense_accuracy: float
    overall_sparse_accuracy: float

    @property
    def num_groups(self) -> int:
        return self.psi.shape[0]

    @property
    def overall_gap(self) -> float:
        """ΔA = A(θ_d) − A(θ_s) over all samples."""
        return self.overall_dense_accuracy - self.overall_sparse_accuracy

    @property
    def num_included(self) -> int:
        return int(self.included.sum())

    @property
    def max_psi(self) -> float:
        return float(self.psi[self.included].max()) if self.num_included else math.nan

    @property
    def min_psi(self) -> float:
        return float(self.psi[self.included].min()) if self.num_included else math.nan

    @property
    def psi_pw(self) -> float:
        """Ψ_PW = max_g ψ_g − min_g ψ_g over included groups (NaN if none)."""
        return self.max_psi - self.min_psi

    @property
    def frac_within_tolerance(self) -> float:
        """Fraction of included groups with ψ_g ≤ ε (point estimate; NaN if none)."""
        n = self.num_included
        return float((self.psi[self.included] <= self.tolerance).sum()) / n if n else math.nan

    @property
    def num_excluded(self) -> int:
        """Groups with samples in both statistics but fewer than ``min_count`` in one."""
        present = (self.count > 0) & (self.dense_count > 0)
        return int((present & ~self.included).sum())

    def exclusion_note(self) -> str:
        """One line on the groups left out for their size ("" if none)."""
        n = self.num_excluded
        if not n:
            return ""
        return (
            f"{n} of {int(((self.count > 0) & (self.dense_count > 0)).sum())} groups left out: fewer than "
            f"{self.min_count} samples, where one sample moves ψ_g by more than {100 / self.min_count:.1f} points"
        )

    def summary(self) -> dict[str, Any]:
        statuses = {s: self.status.count(s) for s in (STATUS_WITHIN, STATUS_VIOLATES, STATUS_UNKNOWN, STATUS_ABSENT)}
        return {
            "num_groups": self.num_groups,
            "num_included": self.num_included,
            "tolerance": self.tolerance,
            "confidence": self.confidence,
            "dense_accuracy": self.overall_dense_accuracy,
            "sparse_accuracy": self.overall_sparse_accuracy,
            "accuracy_gap": self.overall_gap,
            "max_psi": self.max_psi,
            "min_psi": self.min_psi,
            "psi_pw": self.psi_pw,
            "frac_within_tolerance": self.frac_within_tolerance,
            "num_within": statuses[STATUS_WITHIN],
            "num_violates": statuses[STATUS_VIOLATES],
            "num_too_small": statuses[STATUS_UNKNOWN],
            "num_absent": statuses[STATUS_ABSENT],
            "num_excluded": self.num_excluded,
            "min_count": self.min_count,
        }

    def to_dataframe(self, group_names: Sequence[str] | None = None):
        """One row per group (like fairlearn's ``MetricFrame.by_group``), indexed by group."""
        import pandas as pd

        if group_names is not None and len(group_names) != self.num_groups:
            raise ValueError(f"group_names must have {self.num_groups} entries, got {len(group_names)}")
        cols = {
            "count": self.count.tolist(),
            "dense_count": self.dense_count.tolist(),
            "included": self.included.tolist(),
            "dense_accuracy": self.dense_accuracy.tolist(),
            "dense_accuracy_lower": self.dense_accuracy_ci[0].tolist(),
            "dense_accuracy_upper": self.dense_accuracy_ci[1].tolist(),
            "sparse_accuracy": self.sparse_accuracy.tolist(),
            "sparse_accuracy_lower": self.sparse_accuracy_ci[0].tolist(),
            "sparse_accuracy_upper": self.sparse_accuracy_ci[1].tolist(),
            "accuracy_gap": self.accuracy_gap.tolist(),
            "psi": self.psi.tolist(),
            "psi_lower": self.psi_ci[0].tolist(),
            "psi_upper": self.psi_ci[1].tolist(),
            "status": list(self.status),
        }
        index = pd.Index(list(group_names) if group_names is not None else range(self.num_groups), name="group")
        return pd.DataFrame(cols, index=index)


#: Groups with fewer samples are left out of reports unless asked (``min_count``).
DEFAULT_MIN_COUNT = 30


def disparity(
    dense: GroupStats,
    sparse: GroupStats,
    tolerance: float = 0.0,
    *,
    min_count: int = DEFAULT_MIN_COUNT,
    confidence: float = 0.95,
) -> DisparityReport:
    """Disparate impact of pruning: ψ_g = ΔA_g − ΔA per group, on one split.

    Args:
        dense, sparse: statistics of the dense and the sparse model on the same split.
        tolerance: ε >= 0 of the constraint ψ_g ≤ ε.
        min_count: groups with fewer samples than this in either statistics are excluded
            (default 30: below it one sample moves ψ_g by more than 3 points, and a max ψ
            taken over such groups reports noise; :meth:`DisparityReport.exclusion_note`
            says how many were left out).
        confidence: level of the *simultaneous* interval on ψ_g (and of each Wilson interval
            on an accuracy, reported alongside).

    The interval on ψ_g = (A^d_g − A^s_g) − (A^d − A^s) combines four Wilson intervals
    (dense and sparse, group and overall) conservatively: lower = (lo^d_g − hi^s_g) −
    (hi^d − lo^s), upper = (hi^d_g − lo^s_g) − (lo^d − hi^s), each Wilson interval at level
    1 − α/4 (Bonferroni), so by the union bound the ψ_g interval covers with probability at
    least ``confidence`` whatever the dependence between the dense and sparse predictions on
    the same samples. A group is "within ε" when its upper bound is ≤ ε, "violates" when its
    lower bound is > ε, "too small to tell" otherwise, and "absent" when excluded.
    """
    if not isinstance(dense, GroupStats) or not isinstance(sparse, GroupStats):
        raise TypeError("dense and sparse must be GroupStats")
    if dense.num_groups != sparse.num_groups:
        raise ValueError(f"dense has {dense.num_groups} groups but sparse has {sparse.num_groups}")
    tolerance = _real("tolerance", tolerance)
    if not tolerance >= 0.0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
    confidence = _real("confidence", confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    dense, sparse = dense.cpu(), sparse.cpu()
    included = (dense.count >= min_count) & (sparse.count >= min_count)

    nan = torch.tensor(math.nan, dtype=torch.float64)

    def masked(t: Tensor) -> Tensor:
        return torch.where(included, t, nan)

    acc_d, acc_s = masked(dense.accuracy), masked(sparse.accuracy)
    overall_d, overall_s = dense.overall_accuracy, sparse.overall_accuracy
    gap = acc_d - acc_s
    psi = gap - (overall_d - overall_s)

    ci_d = tuple(masked(t) for t in wilson_interval(dense.correct, dense.count, confidence))
    ci_s = tuple(masked(t) for t in wilson_interval(sparse.correct, sparse.count, confidence))
    # Simultaneous interval on ψ_g: four Wilson intervals at level 1 - α/4 each.
    level = 1.0 - (1.0 - confidence) / 4.0
    bd_lo, bd_hi = wilson_interval(dense.correct, dense.count, level)
    bs_lo, bs_hi = wilson_interval(sparse.correct, sparse.count, level)
    tot = lambda s: (s.correct.sum().reshape(1), s.count.sum().reshape(1))  # noqa: E731
    od_lo, od_hi = wilson_interval(*tot(dense), level)
    os_lo, os_hi = wilson_interval(*tot(sparse), level)
    psi_lo = masked((bd_lo - bs_hi) - (od_hi - os_lo))
    psi_hi = masked((bd_hi - bs_lo) - (od_lo - os_hi))

    status = []
    for inc, lo, hi in zip(included.tolist(), psi_lo.tolist(), psi_hi.tolist()):
        if not inc:
            status.append(STATUS_ABSENT)
        elif hi <= tolerance:
            status.append(STATUS_WITHIN)
        elif lo > tolerance:
            status.append(STATUS_VIOLATES)
        else:
            status.append(STATUS_UNKNOWN)

    return DisparityReport(
        tolerance=tolerance,
        confidence=confidence,
        min_count=min_count,
        count=sparse.count.clone(),
        dense_count=dense.count.clone(),
        included=included,
        dense_accuracy=acc_d,
        sparse_accuracy=acc_s,
        dense_accuracy_ci=ci_d,
        sparse_accuracy_ci=ci_s,
        accuracy_gap=gap,
        psi=psi,
        psi_ci=(psi_lo, psi_hi),
        status=status,
        overall_dense_accuracy=overall_d,
        overall_sparse_accuracy=overall_s,
    )
