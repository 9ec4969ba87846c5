"""Input validation shared by the ops: clear errors that name the offending argument."""

from __future__ import annotations

import math

import torch


def check_tensor(
    name: str,
    t: object,
    *,
    dim: int | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
    device: torch.device | None = None,
    device_of: str = "the other inputs",
) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")
    if device is not None and t.device != device:
        verb = "is" if device_of.isidentifier() else "are"  # "x is", "the other inputs are"
        raise ValueError(f"{name} is on {t.device} but {device_of} {verb} on {device}")
    return t


def check_bias(bias: torch.Tensor | None, n: int, x: torch.Tensor) -> None:
    """A linear op's optional bias: 1-D of length ``n``, x's dtype and device."""
    if bias is not None:
        check_tensor("bias", bias, dim=1, dtypes=(x.dtype,), device=x.device, device_of="x")
        if bias.shape[0] != n:
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")


def as_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """x [..., K] as a contiguous [rows, K] matrix (a linear op's batch)."""
    # K = 0: reshape(-1, 0) is ambiguous; the rows are then the product of the leading dims.
    return (x.reshape(-1, k) if k > 0 else x.reshape(math.prod(x.shape[:-1]), 0)).contiguous()


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


def check_index_ranges(*specs: tuple[str, torch.Tensor, int, bool]) -> None:
    """Raise unless every entry of each ``idx`` is in [0, upper) ([0, upper] when the spec's
    ``inclusive`` is True), for several ``(name, idx, upper, inclusive)`` at once with a single
    host transfer (one device synchronisation on CUDA instead of two per tensor)."""
    specs = tuple(spec for spec in specs if spec[1].numel() > 0)
    if not specs:
        return
    bounds = torch.stack([b for _, idx, _, _ in specs for b in (idx.min().to(torch.int64), idx.max().to(torch.int64))]).tolist()
    for i, (name, _, upper, inclusive) in enumerate(specs):
        lo, hi = bounds[2 * i], bounds[2 * i + 1]
        if lo < 0 or hi > upper or (hi == upper and not inclusive):
            interval = f"[0, {upper}]" if inclusive else f"[0, {upper})"
            raise ValueError(f"{name} must be in {interval}, found {lo if lo < 0 else hi}")


FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int64, torch.int32)


#: The most groups an op or method accepts: 2**24 groups already take ~400 MB of per-group
#: outputs; beyond it a typo (``num_groups=10**9``) would try to allocate tens of GB.
MAX_GROUPS = 2**24


def check_num_groups(num_groups: int, bytes_per_group: int = 24) -> None:
    """ValueError naming ``num_groups`` when it is above :data:`MAX_GROUPS`."""
    if num_groups > MAX_GROUPS:
        raise ValueError(
            f"num_groups={num_groups} is more than {MAX_GROUPS} (2**24): the per-group state alone would "
            f"take {num_groups * bytes_per_group / 2**30:.1f} GiB; group ids must be dense in [0, num_groups)"
        )
