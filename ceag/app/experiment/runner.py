"""Running an experiment: every (method, sparsity, seed) of the grid, resumable, then the table and plots."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ceag._io import LOCK_NAME, atomic_write, check_output_dir, json_ready, lock, remove_temp_files
from ceag.app import data as datasets
from ceag.app.experiment.config import (
    METHOD_LABELS,
    ExperimentConfig,
    run_dir_name,
    sparsity_label,
)
from ceag.app.experiment.data_record import check_data_record, write_data_record
from ceag.app.experiment.dense_cache import dense_cache_path, dense_model
from ceag.app.experiment.results import (
    ExperimentResult,
    RunResult,
    _json_chunks,
    _markdown,
)
from ceag.errors import UsageError
from ceag.methods import METHODS
from ceag.models import build_model
from ceag.prune import sparsity_report
from ceag.train import (
    Trainer,
    broadcast_from_main,
    rank_and_world,
)

# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def _final_report(trainer: Trainer) -> tuple[dict, dict, dict, dict]:
    """Per split: the summary, ψ_g, counts and the per-group interval and verdict."""
    summary, psi, count, groups = {}, {}, {}, {}
    for split in ("train", "test"):
        rep = trainer.report(split)  # this process's last evaluation, or a new one
        summary[split] = {**rep.summary(), "accuracy": rep.overall_sparse_accuracy}
        psi[split] = rep.psi.tolist()
        count[split] = rep.count.tolist()
        groups[split] = {
            "psi_lower": rep.psi_ci[0].tolist(),
            "psi_upper": rep.psi_ci[1].tolist(),
            "status": list(rep.status),
            "samples_to_certify": rep.samples_to_certify.tolist() if rep.samples_to_certify is not None else [],
        }
    return summary, psi, count, groups


#: The config fields that span the grid: a folder's experiment may grow along them.
_GRID = ("methods", "sparsities", "seeds")


def _check_config_file(cfg: ExperimentConfig, out: Path) -> ExperimentConfig:
    """Refuse to mix results of different configs in one folder; the config to write.

    The grid may grow: a re-run with other methods, sparsities or seeds adds them, and the
    returned config (the one written) spans the union, so the folder's report keeps every
    finished run. Any other difference raises :class:`~ceag.errors.UsageError`.
    """
    path = out / "config.json"
    merged = cfg
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise ValueError(f"expected a JSON object, got {type(saved).__name__}")
        except (ValueError, OSError) as err:
            raise UsageError(f"{path} is not a readable experiment config ({err}); delete it or choose another --name") from None
        now = {k: v for k, v in cfg.to_dict().items() if k not in cfg.PRESENTATION}
        # A field the saved config lacks was added since: the folder ran as its ADDED_FIELDS value.
        added = cfg.ADDED_FIELDS
        diff = sorted(k for k in now if k not in _GRID and k not in cfg.PRESENTATION and now[k] != saved.get(k, added.get(k)))
        if diff:
            raise UsageError(
                f"{out} holds an experiment with a different config ({', '.join(diff)} differ); "
                "choose another --name or delete the folder"
            )
        union = {}
        for k in _GRID:
            old = saved.get(k)
            old = [float(v) for v in old] if k == "sparsities" and isinstance(old, list) else old
            union[k] = tuple(dict.fromkeys([*(old if isinstance(old, list) else []), *getattr(cfg, k)]))
        try:
            merged = dataclasses.replace(cfg, **union)
        except (ValueError, TypeError) as err:
            raise UsageError(f"{path}: its grid cannot be extended ({err}); delete it or choose another --name") from None
    return merged


def run_one(
    cfg: ExperimentConfig,
    data: datasets.GroupedDataset,
    dense: nn.Module,
    method: str,
    sparsity: float,
    seed: int,
    *,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[Trainer, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Fine-tune a copy of ``dense`` with ``method`` to ``sparsity`` (resumes; cached).

    ``on_epoch_end(trainer, row)``: called after every epoch (:attr:`ceag.train.Trainer.on_epoch_end`).
    metrics.json records the dense model's file in the dense cache, for ``ceag audit RUN_DIR``.
    """
    import copy

    out = cfg.output_dir / run_dir_name(method, sparsity, seed)
    metrics = out / "metrics.json"
    done = broadcast_from_main(_read_metrics(metrics, log) if rank_and_world()[0] == 0 else None)
    if done is not None:
        return done
    tcfg = cfg.train_config(method, sparsity, seed, num_groups=data.num_groups, output_dir=str(out))
    trainer = Trainer(tcfg, copy.deepcopy(dense), data.train, data.test, val_set=data.val)
    trainer.on_epoch_end = on_epoch_end
    trainer.fit(resume=True)
    summary, psi, count, groups = _final_report(trainer)
    timing = trainer.timings.get("mitigation") or trainer.timings.get("pruning") or {"seconds": math.nan, "steps": 1}
    result = RunResult(
        method=method,
        sparsity=sparsity,
        seed=seed,
        summary=summary,
        psi=psi,
        count=count,
        groups=groups,
        history=trainer.history,
        seconds_per_step=timing["seconds"] / max(timing["steps"], 1),
        measured_sparsity=sparsity_report(trainer.model).masked_overall.sparsity,
        dense_model=dense_cache_path(cfg, data, seed).name,
    )
    if trainer.is_main:
        atomic_write(metrics, json.dumps(json_ready(result.to_dict()), allow_nan=False).encode())
    return result


def _read_metrics(path: Path, log: Callable[[str], None]) -> RunResult | None:
    """The finished run's result from its ``metrics.json``; None if missing or unreadable."""
    if not path.exists():
        return None
    try:
        return RunResult.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as err:
        bad = path.with_name(path.name + ".corrupt")
        log(f"{path}: unreadable ({err}); moved to {bad.name}, the run is finished again from its checkpoint")
        path.replace(bad)
        return None


def _estimate_bytes(cfg: ExperimentConfig, data: datasets.GroupedDataset) -> int:
    """Room the experiment needs at least: a dense model and one run's checkpoints (last,
    prev and a temp file, each weights plus two momentum buffers), plus 1 MiB."""
    model = build_model(data.input_shape, data.num_classes, cfg.arch, cfg.hidden)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return 10 * weights + 2**20


def resolution_note(count: torch.Tensor, tolerance: float, min_count: int) -> str:
    """One line on the groups whose ψ_g moves by more than ε per sample, or "" if none.

    A group of n samples has accuracy steps of 1/n: with n < 1/ε one misclassified sample
    more than the average takes ψ_g past ε, so such groups end within ε only by losing no
    more samples than the average does, and their final ψ_g jumps by 1/n at every step.
    """
    if tolerance <= 0:
        return ""
    reported = count >= min_count
    coarse = reported & (count < 1 / tolerance)
    if not bool(coarse.any()):
        return ""
    smallest = int(count[reported].min())
    return (
        f"note: {int(coarse.sum())} of the {int(reported.sum())} groups with >= {min_count} training samples have "
        f"fewer than 1/ε = {1 / tolerance:.0f}: one sample moves their ψ_g by more than ε "
        f"(by {100 / smallest:.1f} points at n = {smallest})"
    )


def constraint_note(count: torch.Tensor, cfg: ExperimentConfig) -> str:
    """One line on which groups the constrained methods constrain (``constrain_min_count``)."""
    present = count > 0
    threshold = cfg.train_config(cfg.methods[0], cfg.sparsities[0], cfg.seeds[0], num_groups=1).constrained_min_count
    constrained = int((present & (count >= threshold)).sum())
    free = int(present.sum()) - constrained
    if free == 0:
        return f"constraints: all {constrained} groups with training samples are constrained"
    same = " (the groups the report judges)" if threshold == cfg.min_count else ""
    return (
        f"constraints: {constrained} groups with >= {threshold} training samples are constrained{same}; "
        f"the other {free} keep λ = 0 (--constrain-min-count; 0 constrains every group)"
    )


def load_data(cfg: ExperimentConfig) -> datasets.GroupedDataset:
    """The experiment's data set, fetching it first if needed (real data sets only)."""
    if cfg.dataset in datasets.DATASETS and cfg.dataset != "synthetic" and not datasets.is_fetched(cfg.dataset, cfg.data_root):
        datasets.fetch(cfg.dataset, cfg.data_root, progress=cfg.progress)
    data = datasets.load(cfg.dataset, cfg.data_root, **cfg.dataset_options)
    if cfg.train_samples is not None:
        data = _train_subset(data, cfg.train_samples)
    if cfg.val_fraction > 0:
        data = hold_out(data, cfg.val_fraction)
    return data


def hold_out(data: datasets.GroupedDataset, fraction: float) -> datasets.GroupedDataset:
    """``data`` with round(fraction · n_g) training samples of every group g moved to ``val``
    (a fixed random choice: the same for every run seed and method)."""
    x, y, g = data.train.tensors
    gen = torch.Generator().manual_seed(_SUBSET_SEED + 1)
    order = torch.randperm(len(g), generator=gen)
    order = order[torch.argsort(g[order], stable=True)]  # grouped, random within each group
    counts = torch.bincount(g, minlength=data.num_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(g)) - starts[g[order]]  # position within its group
    take = torch.round(counts.double() * fraction).long()
    is_val = torch.zeros(len(g), dtype=torch.bool)
    is_val[order[rank < take[g[order]]]] = True
    if not bool(is_val.any()):
        raise UsageError(f"val_fraction={fraction} holds out no sample of the {len(g)} training samples")
    val = torch.utils.data.TensorDataset(x[is_val], y[is_val], g[is_val])
    train = torch.utils.data.TensorDataset(x[~is_val], y[~is_val], g[~is_val])
    note = f"{data.description} ({int(is_val.sum())} training samples held out for the dual step)"
    return dataclasses.replace(data, train=train, val=val, description=note)


#: Seed of the ``train_samples`` subset: the same images for every run seed and method.
_SUBSET_SEED = 0


def _train_subset(data: datasets.GroupedDataset, n: int) -> datasets.GroupedDataset:
    """``data`` with a fixed random subset of ``n`` training samples (the test split whole)."""
    total = len(data.train)
    if n > total:
        raise UsageError(f"train_samples={n} is more than the {total} training samples of {data.name}")
    keep = torch.randperm(total, generator=torch.Generator().manual_seed(_SUBSET_SEED))[:n].sort().values
    subset = torch.utils.data.TensorDataset(*(t[keep] for t in data.train.tensors))
    return dataclasses.replace(data, train=subset, description=f"{data.description} (train subset: {n} of {total})")


def run_experiment(
    cfg: ExperimentConfig,
    *,
    log: Callable[[str], None] = print,
    plots: bool = True,
    on_epoch_end: Callable[[Trainer, dict[str, Any]], None] | None = None,
) -> ExperimentResult:
    """Run (or finish) every run of the grid, then write results.json/.md and plots.

    ``on_epoch_end(trainer, row)``: called after every epoch of every run trained now (e.g. to
    watch progress or memory); runs already finished are not trained again.
    """
    cfg.validate()
    if rank_and_world()[1] > 1 and cfg.storage != "dense":  # before any folder or file is made
        raise UsageError(
            f"--storage {cfg.storage} resizes parameters when pruning, which several processes (torchrun) "
            "cannot share; use --storage dense with torchrun"
        )
    out = cfg.output_dir
    if rank_and_world()[1] > 1 and rank_and_world()[0] != 0:  # data parallel (torchrun): rank 0 writes and logs
        return _run_experiment(cfg, out, log=lambda msg: None, plots=False, on_epoch_end=on_epoch_end)
    new_folder = not out.exists()
    check_output_dir(out)  # before fetching data or training: the folder takes files
    try:
        with lock(out / LOCK_NAME, what=f"experiment folder {out}"):
            return _run_experiment(cfg, out, log=log, plots=plots, on_epoch_end=on_epoch_end)
    except BaseException:
        if new_folder and {p.name for p in out.iterdir()} <= {LOCK_NAME}:  # failed before writing anything
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run_experiment(
    cfg: ExperimentConfig,
    out: Path,
    *,
    log: Callable[[str], None],
    plots: bool,
    on_epoch_end: Callable[[Trainer, dict[str, Any]], None] | None,
) -> ExperimentResult:
    main = rank_and_world()[0] == 0
    data = load_data(cfg)
    if main:
        check_output_dir(out, _estimate_bytes(cfg, data))
        folder_cfg = _check_config_file(cfg, out)
        check_data_record(data, out, what="Choose another --name, or delete the folder")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.json", json.dumps(folder_cfg.to_dict(), indent=1).encode())
        write_data_record(data, out)
    grid = [(seed, s, m) for seed in cfg.seeds for s in cfg.sparsities for m in cfg.methods]
    log(
        f"{data.name}: {len(data.train)} train / {len(data.test)} test samples"
        + (f" / {len(data.val)} held out for the dual step" if data.val is not None else "")
        + f", {data.num_groups} groups; "
        f"{len(grid)} runs -> {out}"
    )
    for note in data.notes:
        log(note)
    counts = torch.bincount(data.train.tensors[2], minlength=data.num_groups)
    small = int(((counts > 0) & (counts < cfg.min_count)).sum())
    if small:
        log(
            f"reports: {small} of {int((counts > 0).sum())} groups have fewer than {cfg.min_count} training samples "
            f"and are left out of ψ (one sample moves their ψ_g by more than {100 / cfg.min_count:.1f} points; --min-count)"
        )
    note = resolution_note(counts, cfg.tolerance, cfg.min_count)
    if note:
        log(note)
    if any(METHODS[m].constrained for m in cfg.methods):
        log(constraint_note(counts, cfg))
        log(f"dual step: η_λ = {cfg.dual_lr_text(data.num_groups, len(data.train))}")
    runs: list[RunResult] = []
    for seed in cfg.seeds:
        dense = None
        for sparsity in cfg.sparsities:
            for method in cfg.methods:
                # Rank 0 decides (it may move a bad metrics.json aside); every rank follows.
                r = broadcast_from_main(
                    _read_metrics(out / run_dir_name(method, sparsity, seed) / "metrics.json", log) if main else None
                )
                done = r is not None
                if dense is None and not done:
                    dense = dense_model(cfg, data, seed, log=log)
                start = time.perf_counter()
                if r is None:
                    r = run_one(
                        cfg,
                        data,
                        dense,
                        method,
                        sparsity,
                        seed,  # type: ignore[arg-type]
                        log=log,
                        on_epoch_end=on_epoch_end,
                    )
                runs.append(r)
                log(
                    f"[{len(runs)}/{len(grid)}] {METHOD_LABELS[method]:<5} sparsity {r.measured_sparsity:.1%} seed {seed}: "
                    + " | ".join(_split_line(split, r.summary[split]) for split in ("train", "test"))
                    + (" (cached)" if done else f" ({time.perf_counter() - start:.0f} s)")
                )
    if not main:
        return ExperimentResult(cfg, runs, tuple(data.group_names), out)
    # Runs of earlier commands in this folder (other methods, sparsities or seeds) stay in its report.
    asked = {(r.method, r.sparsity, r.seed) for r in runs}
    for seed in folder_cfg.seeds:
        for sparsity in folder_cfg.sparsities:
            for method in folder_cfg.methods:
                if (method, sparsity, seed) not in asked:
                    earlier = _read_metrics(out / run_dir_name(method, sparsity, seed) / "metrics.json", log)
                    if earlier is not None:
                        runs.append(earlier)
    result = ExperimentResult(folder_cfg, runs, tuple(data.group_names), out)
    remove_temp_files(out)  # left by killed runs (results.json, config.json, ...)
    if plots:
        result.plots = write_plots(result)
    atomic_write(out / "results.json", _json_chunks(result.to_dict(), indent=1))
    atomic_write(out / "results.md", (_markdown(result) + "\n").encode())
    return result


def _split_line(split: str, s: dict[str, Any]) -> str:
    """ "test acc 85.8% max ψ 2.3% (certified within ε 3, violate 0, too small 22)"."""
    line = f"{split} acc {s['accuracy']:.1%} max ψ {s['max_psi']:.1%}"
    if not math.isnan(s.get("num_within", math.nan)):
        line += f" (certified within ε {s['num_within']}, violate {s['num_violates']}, too small {s['num_too_small']})"
    return line


def write_plots(result: ExperimentResult) -> list[Path]:
    """The paper's figures for this experiment, under ``output_dir/plots``."""
    from ceag.app import plots

    cfg = result.config
    eps = cfg.tolerance
    folder = result.output_dir / "plots"
    written: list[Path] = []
    label = lambda m: METHOD_LABELS.get(m, m)  # noqa: E731
    for sparsity in cfg.sparsities:
        runs = [r for r in result.runs if r.sparsity == sparsity]
        tag = f"s{sparsity_label(sparsity)}"
        for split in ("train", "test"):
            psi, intervals = {}, {}
            for m in cfg.methods:
                mine = [r for r in runs if r.method == m]
                per_seed = torch.tensor([r.psi[split] for r in mine], dtype=torch.float64)
                if len(per_seed):
                    psi[label(m)] = per_seed.nanmean(0)  # mean over seeds (NaN: excluded everywhere)
                if len(mine) == 1 and mine[0].groups.get(split):  # one run: its intervals and verdicts
                    g = mine[0].groups[split]
                    intervals[label(m)] = (g["psi_lower"], g["psi_upper"])
            counts = next(r.count[split] for r in runs)
            written.append(
                plots.group_gap_bars(
                    psi,
                    eps,
                    folder / f"group_psi-{split}-{tag}.png",
                    group_names=result.group_names,
                    counts=counts,
                    split=split,
                    seeds=len({r.seed for r in runs}),
                    intervals=intervals or None,
                )
            )
            histories = {label(m): [r.history for r in runs if r.method == m] for m in cfg.methods}
            written.append(
                plots.disparity_over_training(histories, eps, folder / f"psi_over_training-{split}-{tag}.png", split=split)
            )
        for m in cfg.methods:
            first = next((r for r in runs if r.method == m), None)
            if first is None or not METHODS[m].constrained:
                continue
            rows = [h for h in first.history if "multipliers" in h]
            if rows:
                written.append(
                    plots.multiplier_trajectories(
                        [h["multipliers"] for h in rows],
                        folder / f"multipliers-{m}-{tag}.png",
                        epochs=[h["epoch"] for h in rows],
                        group_names=result.group_names,
                        title=f"{label(m)} multipliers, sparsity {sparsity:.0%}, seed {first.seed}",
                    )
                )
    if len(cfg.sparsities) > 1:
        for split in ("train", "test"):
            points = [
                {
                    "method": label(row["method"]),
                    "sparsity": row["sparsity"],
                    "accuracy": row[f"{split}_accuracy"],
                    "accuracy_std": row[f"{split}_accuracy_std"],
                    "max_psi": row[f"{split}_max_psi"],
                    "max_psi_std": row[f"{split}_max_psi_std"],
                    "psi_pw": row[f"{split}_psi_pw"],
                    "psi_pw_std": row[f"{split}_psi_pw_std"],
                }
                for row in result.rows()
            ]
            written.append(plots.tradeoff(points, eps, folder / f"tradeoff-{split}.png", split=split))
    return written
