"""Input validation shared by the ops: clear errors that name the offending argument."""

from __future__ import annotations

import torch


def check_tensor(
    name: str,
    t: object,
    *,
    dim: int | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
    return t


def check_index_range(name: str, idx: torch.Tensor, upper: int, *, allow: int | None = None) -> None:
    """Raise unless every entry of idx is in [0, upper) (entries equal to ``allow`` excepted)."""
    if idx.numel() == 0:
        return
    valid = idx if allow is None else idx[idx != allow]
    if valid.numel() == 0:
        return
    lo, hi = int(valid.min()), int(valid.max())
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} must be in [0, {upper}), found {bad}")


FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int64, torch.int32)
