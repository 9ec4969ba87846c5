"""Checkpoint files of a run and the RNG state they carry.

A checkpoint is :func:`ceag._io.write_verified`'s format: magic line, JSON header (payload
length and SHA-256), ``torch.save`` payload loaded with ``weights_only=True``. Resuming is
bit-identical on the machine (and build) that wrote it: the CPU kernels compile with
``-march=native``, so another CPU may round differently.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ceag._io import CEAG_CHECKPOINT_MAGIC, CorruptFileError, read_verified, write_verified

CHECKPOINT_NAME = "last.ckpt"
PREVIOUS_CHECKPOINT_NAME = "prev.ckpt"


#: (path, epoch, global step) of the newest run checkpoint this process wrote: what an
#: interrupted ``ceag`` command says it leaves behind.
_LAST_SAVED: tuple[Path, int, int] | None = None


def last_saved() -> tuple[Path, int, int] | None:
    """``(path, epoch, global_step)`` of the newest ``last.ckpt`` this process wrote, or None."""
    return _LAST_SAVED


class CheckpointError(CorruptFileError):
    """A checkpoint file is truncated, corrupted or not a ceag checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, *, previous: str | os.PathLike | None = None) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    Layout: magic line, JSON header line (payload length and SHA-256), ``torch.save`` payload
    (:func:`ceag._io.write_verified`). A crash at any point leaves either the previous file or
    the new one, never a mix. ``previous``: once the new file is on disk, the old ``path`` (if
    any) is first renamed to this, so the checkpoint before the newest survives (a crash
    between the two renames leaves only ``previous``).
    """
    return write_verified(state, path, magic=CEAG_CHECKPOINT_MAGIC, backup=previous)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying length and SHA-256.

    Only tensors and plain Python values are unpickled: a crafted file that would run code
    raises :class:`CheckpointError` instead.
    """
    return read_verified(path, magic=CEAG_CHECKPOINT_MAGIC, what="checkpoint", error=CheckpointError, map_location=map_location)


# ---------------------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    # numpy's state as a tensor and plain values: checkpoints load with weights_only=True.
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    if isinstance(n, tuple):  # written before the state was stored as a tensor
        np.random.set_state(n)
    else:
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def record_saved(path: Path, epoch: int, global_step: int) -> None:
    """Remember ``path`` as the newest run checkpoint this process wrote (see :func:`last_saved`)."""
    global _LAST_SAVED
    _LAST_SAVED = (path, epoch, global_step)


def load_resumable(last: Path | None, previous: Path | None, map_location: Any = "cpu") -> tuple[dict[str, Any], bool] | None:
    """The state to resume from: ``last``, else ``previous``, as ``(state, from_previous)``;
    None when neither exists. A truncated or corrupted file is named in a warning and
    skipped; :class:`CheckpointError` when checkpoints exist but none is usable."""
    errors = []
    for path in (last, previous):
        if path is None or not path.exists():
            continue
        try:
            state = load_checkpoint(path, map_location=map_location)
        except CheckpointError as err:
            warnings.warn(f"unusable checkpoint: {err}", RuntimeWarning, stacklevel=4)
            errors.append(str(err))
            continue
        if path == previous:
            why = "it is unusable" if errors else "it is missing (interrupted while being replaced)"
            warnings.warn(
                f"resuming from the previous checkpoint {path} (step {state['global_step']}): "
                f"{last.name if last is not None else 'last.ckpt'} is not used as {why}",
                RuntimeWarning,
                stacklevel=4,
            )
        return state, path == previous
    if errors:
        folder = (last or previous).parent  # type: ignore[union-attr]
        raise CheckpointError(f"no usable checkpoint in {folder} ({'; '.join(errors)}); delete the folder to start over")
    return None
