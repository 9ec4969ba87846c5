"""The seed's dense model: trained once, cached under ``output_root/.dense-cache`` by everything it depends on."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ceag._io import lock, remove_temp_files
from ceag.app import data as datasets
from ceag.app.experiment.config import DENSE_CACHE, ExperimentConfig
from ceag.models import build_model
from ceag.train import (
    CheckpointError,
    barrier,
    fit_dense,
    load_checkpoint,
    rank_and_world,
    save_checkpoint,
)

# ---------------------------------------------------------------------------------------
# Dense model
# ---------------------------------------------------------------------------------------


def _dense_key(cfg: ExperimentConfig, data: datasets.GroupedDataset, seed: int) -> str:
    fields = {
        "dataset": cfg.dataset,
        "dataset_options": cfg.dataset_options,
        "arch": cfg.arch,
        "hidden": list(cfg.hidden),
        "dense_epochs": cfg.dense_epochs,
        "dense_lr": cfg.dense_lr,
        "dense_optimizer": cfg.dense_optimizer,
        "batch_size": cfg.batch_size,
        "seed": seed,
        "n": [len(data.train), len(data.test)],
        "shape": list(data.input_shape),
        "torch": torch.__version__.split("+")[0],
        "version": 1,
    }
    if cfg.val_fraction > 0:  # held-out samples are left out of dense training
        fields["val_fraction"] = cfg.val_fraction
    if data.source_digest:  # your table or images: the files' content, not only their path
        fields["table" if cfg.dataset == datasets.TABLE else "images"] = data.source_digest
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return f"{cfg.dataset}-seed{seed}-{digest}"


def dense_cache_path(cfg: ExperimentConfig, data: datasets.GroupedDataset, seed: int) -> Path:
    """Where the seed's dense model of this experiment is cached (whether or not it is there)."""
    return Path(cfg.output_root) / DENSE_CACHE / f"{_dense_key(cfg, data, seed)}.ckpt"


def dense_model(
    cfg: ExperimentConfig, data: datasets.GroupedDataset, seed: int, *, log: Callable[[str], None] = print
) -> nn.Module:
    """The seed's trained dense model, from ``output_root/.dense-cache`` or trained now.

    Training: ``dense_epochs`` of Adam (or SGD with momentum 0.9) at ``dense_lr`` on the
    training split, batches of ``batch_size`` in the order :func:`ceag.train.epoch_permutation`
    gives, so the same key always yields the same model. A NaN / Inf loss or gradient raises
    :class:`ceag.train.NonFiniteError` (nothing cached) or skips the step, by
    ``cfg.on_nonfinite``.
    """
    cache = dense_cache_path(cfg, data, seed)
    rank, world = rank_and_world()
    if rank != 0:  # data parallel: rank 0 trains (or loads) and caches it; the others read it
        barrier()
        model = _fresh_model(cfg, data, seed)
        model.load_state_dict(load_checkpoint(cache)["model"])
        return model
    # One trainer per cache entry: a second process with the same key waits, then reads it.
    with lock(
        cache.with_suffix(".lock"),
        what=f"dense-cache entry {cache}",
        wait=True,
        on_wait=lambda pid: log(f"dense model (seed {seed}): waiting for PID {pid}, which is training it"),
    ):
        model = _cached_or_trained_dense_model(cfg, data, seed, cache, log)
    barrier()
    return model


def _fresh_model(cfg: ExperimentConfig, data: datasets.GroupedDataset, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(data.input_shape, data.num_classes, cfg.arch, cfg.hidden)


def _cached_or_trained_dense_model(
    cfg: ExperimentConfig, data: datasets.GroupedDataset, seed: int, cache: Path, log: Callable[[str], None]
) -> nn.Module:
    remove_temp_files(cache.parent, cache.name)  # left by killed runs (the entry is locked: no live writer)
    model = _fresh_model(cfg, data, seed)
    if cache.exists():
        try:
            model.load_state_dict(load_checkpoint(cache)["model"])
            log(f"dense model (seed {seed}): cached {cache}")
            return model
        except (CheckpointError, KeyError, TypeError, RuntimeError) as err:  # rebuilt, never trusted
            log(f"dense model (seed {seed}): ignoring unusable cache entry {cache} ({err})")
            model = _fresh_model(cfg, data, seed)  # load_state_dict may have copied part of it in
    start = time.perf_counter()
    x, y, _ = data.train.tensors
    skipped = fit_dense(
        model,
        x,
        y,
        epochs=cfg.dense_epochs,
        batch_size=cfg.batch_size,
        seed=seed,
        optimizer=cfg.dense_optimizer,
        lr=cfg.dense_lr,
        weight_decay=cfg.weight_decay,
        device=cfg.device,
        on_nonfinite=cfg.on_nonfinite,
        show_progress=cfg.progress,
        log=log,
    )
    model.cpu()
    save_checkpoint({"model": model.state_dict(), "key": cache.stem, "features": list(data.feature_names)}, cache)
    log(
        f"dense model (seed {seed}): trained {cfg.dense_epochs} epochs in {time.perf_counter() - start:.1f} s"
        + (f", {skipped} non-finite steps skipped" if skipped else "")
    )
    return model
