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


def paired_psi_interval(
    count: Tensor, lost: Tensor, gained: Tensor, included: Tensor, confidence: float = 0.95
) -> tuple[Tensor, Tensor, Tensor]:
    """Simultaneous interval on ψ_g from paired outcomes: (lower, upper, per-sample variance).

    Both models classify the same samples, so ψ_g is a mean of paired differences: with
    d_i = 1[dense right] − 1[sparse right], ψ_g = mean_g(d) − mean(d). Only the discordant
    samples carry information: ``lost`` [G] (dense right, sparse wrong) and ``gained`` [G]
    (the reverse). Writing ψ_g = (1 − p_g) δ_g − Σ_{h≠g} p_h δ_h with δ_h = mean_h(d) and
    p_h = n_h / N, groups independent given their sizes,

        Var ψ_g = (1 − p_g)² σ_g² / n_g + Σ_{h≠g} n_h σ_h² / N²,   σ_h² = π⁺_h + π⁻_h − δ_h²

    (π⁺ / π⁻ the lost / gained shares). The interval is ψ̃_g ± z √Var with z the normal
    quantile at 1 − α / (2m), m the number of ``included`` groups (Bonferroni: all m hold at
    once with probability ≥ ``confidence``). Group g's own term uses the adjusted Wald of
    Bonett & Price (2012) for a paired difference, generalised to any z as Agresti & Coull
    did for one proportion: z²/4 is added to each discordant count and z²/2 to n_g before
    δ_g and σ_g² are computed. At z = 1.96 that is their "add one to each discordant cell";
    it keeps a group with no discordant pair from getting a zero-width interval, and the
    coverage simulations in tests/metrics/test_paired.py hold it at the nominal level
    down to groups of 30. The other groups' term is the plain estimate (many samples).

    Groups not ``included`` get NaN. Returns float64 tensors on the CPU.
    """
    count, lost, gained = (torch.as_tensor(t).cpu().to(torch.float64) for t in (count, lost, gained))
    included = torch.as_tensor(included).cpu().to(torch.bool)
    z = _simultaneous_z(included, confidence)
    n_all = count.sum().clamp_min(1)
    safe = count.clamp_min(1)
    delta = (lost - gained) / safe
    var_unit = ((lost + gained) / safe - delta**2).clamp_min(0)  # σ_h² per sample
    spread = (count * var_unit).sum()  # Σ_h n_h σ_h²
    rest_var = (spread - count * var_unit).clamp_min(0) / n_all**2
    rest_mean = ((lost.sum() - lost) - (gained.sum() - gained)) / n_all
    share = count / n_all
    # Adjusted own-group estimate (Bonett–Price at z = 1.96).
    n_adj = count + z * z / 2
    lost_adj, gained_adj = lost + z * z / 4, gained + z * z / 4
    delta_adj = (lost_adj - gained_adj) / n_adj
    var_adj = ((lost_adj + gained_adj) / n_adj - delta_adj**2).clamp_min(0)
    centre = (1 - share) * delta_adj - rest_mean
    half = z * torch.sqrt((1 - share) ** 2 * var_adj / n_adj + rest_var)
    nan = torch.tensor(math.nan, dtype=torch.float64)
    keep = included & (count > 0)
    return (
        torch.where(keep, centre - half, nan),
        torch.where(keep, centre + half, nan),
        torch.where(keep, var_adj, nan),
    )


def _simultaneous_z(included: Tensor, confidence: float) -> float:
    """The normal quantile at 1 − α / (2m), m the included groups: Bonferroni over them."""
    m = max(int(included.sum()), 1)
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / (2.0 * m))


def samples_to_certify(psi: Tensor, var_unit: Tensor, tolerance: float, z: float) -> Tensor:
    """Samples a group would need for its interval's upper end to reach ε at its observed ψ̂_g
    and discordance: ⌈z² σ_g² / (ε − ψ̂_g)²⌉ (the own-group term only); NaN where ψ̂_g ≥ ε
    (no sample size certifies a group whose estimate is above ε)."""
    room = tolerance - psi
    need = torch.ceil(z * z * var_unit / room.clamp_min(1e-12) ** 2)
    return torch.where(room > 0, need, torch.tensor(math.nan, dtype=torch.float64))


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
    interval: str = "unpaired"
    samples_to_certify: Tensor | None = None

    @property
    def half_width(self) -> Tensor:
        """Half the width of each group's simultaneous ψ_g interval (NaN where excluded)."""
        return (self.psi_ci[1] - self.psi_ci[0]) / 2

    @property
    def measurable(self) -> Tensor:
        """Included groups whose interval half-width is at most 2ε (at ε = 0: 1 point).

        Their verdict can fall either way: ψ_g = ε ± 2ε is told apart from both 0 and
        violations of 3ε. A max ψ over these groups is a number the data supports; a max
        over every group is often set by a group of 30 where one sample is 3 points.
        """
        limit = 2 * self.tolerance if self.tolerance > 0 else 0.01
        return self.included & (self.half_width <= limit)

    @property
    def max_psi_measurable(self) -> float:
        keep = self.measurable
        return float(self.psi[keep].max()) if bool(keep.any()) else math.nan

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
            # Groups with no sample in either split; those with too few are num_excluded.
            "num_absent": int(((self.count == 0) | (self.dense_count == 0)).sum()),
            "num_excluded": self.num_excluded,
            "min_count": self.min_count,
            "interval": self.interval,
            "num_measurable": int(self.measurable.sum()),
            "max_psi_measurable": self.max_psi_measurable,
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
            "measurable": self.measurable.tolist(),
        }
        if self.samples_to_certify is not None:
            cols["samples_to_certify"] = self.samples_to_certify.tolist()
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
    lost: Tensor | None = None,
    gained: Tensor | None = None,
) -> DisparityReport:
    """Disparate impact of pruning: ψ_g = ΔA_g − ΔA per group, on one split.

    Args:
        dense, sparse: statistics of the dense and the sparse model on the same split.
        lost, gained: [G] per-group counts of the samples the dense model classified right
            and the sparse one wrong (``lost``) and the reverse (``gained``), from evaluating
            both models on the same samples (:func:`ceag.metrics.paired_counts`). With them
            the interval on ψ_g is the paired one (:func:`paired_psi_interval`,
            simultaneous over the included groups); the report's ``interval`` says which.
        tolerance: ε >= 0 of the constraint ψ_g ≤ ε.
        min_count: groups with fewer samples than this in either statistics are excluded
            (default 30: below it one sample moves ψ_g by more than 3 points, and a max ψ
            taken over such groups reports noise; :meth:`DisparityReport.exclusion_note`
            says how many were left out).
        confidence: level of the *simultaneous* interval on ψ_g (and of each Wilson interval
            on an accuracy, reported alongside).

    Without ``lost`` / ``gained`` (the pairing unknown: e.g. the two models evaluated on
    different samples, or only their per-group counts kept) the interval on
    ψ_g = (A^d_g − A^s_g) − (A^d − A^s) combines four Wilson intervals
    (dense and sparse, group and overall) conservatively: lower = (lo^d_g − hi^s_g) −
    (hi^d − lo^s), upper = (hi^d_g − lo^s_g) − (lo^d − hi^s), each Wilson interval at level
    1 − α/4 (Bonferroni), so by the union bound the ψ_g interval covers with probability at
    least ``confidence`` whatever the dependence between the dense and sparse predictions on
    the same samples. That interval holds per group, not simultaneously, and is several
    times wider than the paired one (tests/metrics/test_paired.py: 3,000 samples with 3%
    discordant, half-width 4.7 points against 0.8).

    A group is "within ε" when its upper bound is ≤ ε, "violates" when its lower bound is
    > ε, "too small to tell" otherwise, and "absent" when excluded. With the paired interval
    ``samples_to_certify`` says, per group whose estimate is below ε, how many samples would
    certify it within ε at its observed discordance.
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
    if (lost is None) != (gained is None):
        raise ValueError("pass both lost and gained (the paired counts), or neither")
    if lost is not None:
        lost, gained = _check_paired(dense, sparse, lost, gained)

    nan = torch.tensor(math.nan, dtype=torch.float64)

    def masked(t: Tensor) -> Tensor:
        return torch.where(included, t, nan)

    acc_d, acc_s = masked(dense.accuracy), masked(sparse.accuracy)
    overall_d, overall_s = dense.overall_accuracy, sparse.overall_accuracy
    gap = acc_d - acc_s
    psi = gap - (overall_d - overall_s)

    ci_d = tuple(masked(t) for t in wilson_interval(dense.correct, dense.count, confidence))
    ci_s = tuple(masked(t) for t in wilson_interval(sparse.correct, sparse.count, confidence))
    to_certify = None
    if lost is not None:
        psi_lo, psi_hi, var_unit = paired_psi_interval(dense.count, lost, gained, included, confidence)
        to_certify = samples_to_certify(psi, var_unit, tolerance, _simultaneous_z(included, confidence))
    else:  # the pairing unknown: four Wilson intervals at level 1 - α/4 each
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
        interval="unpaired" if lost is None else "paired",
        samples_to_certify=to_certify,
    )


def _check_paired(dense: GroupStats, sparse: GroupStats, lost: Any, gained: Any) -> tuple[Tensor, Tensor]:
    """``lost`` / ``gained`` as int64 CPU tensors, checked against the two statistics."""
    out = []
    for name, t in (("lost", lost), ("gained", gained)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != dense.count.shape:
            raise ValueError(f"{name} must have shape {tuple(dense.count.shape)}, got {tuple(t.shape)}")
        t = t.detach().cpu()
        if t.is_floating_point() and not bool((torch.isfinite(t) & (t == t.round())).all()):
            raise ValueError(f"{name} must hold whole numbers")
        t = t.to(torch.int64)
        if bool((t < 0).any()):
            raise ValueError(f"{name} must be >= 0")
        out.append(t)
    lost, gained = out
    if not torch.equal(dense.count, sparse.count):
        raise ValueError("paired counts need both models evaluated on the same samples, but dense.count != sparse.count")
    if bool((lost > dense.correct).any()) or bool((gained > dense.count - dense.correct).any()):
        raise ValueError("lost must be <= dense.correct and gained <= the dense model's errors, per group")
    if not torch.equal(dense.correct - lost + gained, sparse.correct):
        raise ValueError("lost / gained do not match the statistics: sparse.correct != dense.correct - lost + gained")
    return lost, gained
