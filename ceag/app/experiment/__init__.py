"""Experiments: dense model → pruning → fine-tuning per method, repeated over seeds, reported.

This is what the ``ceag`` command runs (``ceag run / compare / sweep``), usable from Python::

    from ceag.app.experiment import ExperimentConfig, run_experiment
    result = run_experiment(ExperimentConfig(dataset="adult", methods=("nft", "ceag"), seeds=(0, 1, 2)))
    print(result.table())

For every seed one dense model is trained (or loaded from a cache keyed by everything it
depends on), and every (method, sparsity) starts from that same dense model with the same
data order, GMP schedule and optimiser (:class:`ceag.train.Trainer`), so methods differ
only in the fine-tuning objective.

Files, under ``output_root/name/``::

    config.json                       the resolved ExperimentConfig
    <method>-s<sparsity>-seed<k>/     one Trainer run: history.json/.csv, last.ckpt, metrics.json
    results.json, results.md          the table (mean ± std over seeds) and per-run summaries
    plots/*.png                       per-group ψ bars, ψ over training, multipliers, trade-off
    output_root/.dense-cache/*.ckpt   dense models, shared between experiments

A finished run (its ``metrics.json`` exists) is not run again, and an interrupted one
continues from its last checkpoint, so re-running the same command resumes the experiment
(every file is written atomically, so a kill at any point leaves a resumable folder).
"""

from ceag.app.experiment.config import (
    DENSE_CACHE,
    METHOD_LABELS,
    ExperimentConfig,
    run_dir_name,
    sparsity_label,
)
from ceag.app.experiment.dense_cache import dense_cache_path, dense_model
from ceag.app.experiment.results import ExperimentResult, RunResult
from ceag.app.experiment.runner import (
    load_data,
    resolution_note,
    run_experiment,
    run_one,
    write_plots,
)

__all__ = [
    "DENSE_CACHE",
    "METHOD_LABELS",
    "ExperimentConfig",
    "ExperimentResult",
    "RunResult",
    "dense_cache_path",
    "dense_model",
    "load_data",
    "resolution_note",
    "run_dir_name",
    "run_experiment",
    "run_one",
    "sparsity_label",
    "write_plots",
]
