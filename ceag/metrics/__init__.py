"""Group metrics: per-group statistics of a model on a split, and the disparity of pruning.

- :class:`GroupStats` holds, per group, the sample count, the number classified correctly and
  the summed cross-entropy (int64 / int64 / float64, on the CPU once finalised).
- :func:`evaluate` streams a model over a DataLoader of ``(inputs, target, group)`` batches
  through the fused :func:`ceag.ops.group_cross_entropy` (eval mode, ``torch.no_grad``);
  :func:`dense_reference` is the same pass on the dense model, done once before pruning.
- :func:`disparity` compares a dense and a sparse model's statistics on the same split
  (ALGORITHM.md, "Metrics"): ΔA_g, ΔA, ψ_g = ΔA_g − ΔA, Ψ_PW = max ψ − min ψ, max ψ, the
  fraction of groups with ψ_g ≤ ε, with Wilson intervals on the accuracies and an interval on
  ψ_g that tells which groups are certified within ε: paired (simultaneous over groups) when
  both models were evaluated on the same samples (:func:`evaluate_samples`,
  :func:`paired_counts`), else a conservative union of four Wilson intervals.

Groups without samples (or with fewer than ``min_count``) in either statistics are excluded
from every max/min/fraction: their ψ is NaN, never 0.
"""

from ceag.metrics.disparity import (
    DEFAULT_MIN_COUNT,
    STATUS_ABSENT,
    STATUS_UNKNOWN,
    STATUS_VIOLATES,
    STATUS_WITHIN,
    DisparityReport,
    disparity,
    paired_psi_interval,
    samples_to_certify,
    wilson_interval,
)
from ceag.metrics.stats import GroupStats, Outcomes, dense_reference, evaluate, evaluate_samples, paired_counts

__all__ = [
    "DEFAULT_MIN_COUNT",
    "DisparityReport",
    "GroupStats",
    "Outcomes",
    "STATUS_ABSENT",
    "STATUS_UNKNOWN",
    "STATUS_VIOLATES",
    "STATUS_WITHIN",
    "dense_reference",
    "disparity",
    "evaluate",
    "evaluate_samples",
    "paired_counts",
    "paired_psi_interval",
    "samples_to_certify",
    "wilson_interval",
]
