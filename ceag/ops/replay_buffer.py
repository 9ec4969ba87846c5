"""Per-group ring buffers of recent per-sample values (CEAG's replay buffers).

``replay_buffer_update(buffer, head, fill, group, values)`` pushes ``values[i]`` into row
``group[i]`` of ``buffer`` [G, k], in batch order and in place: a group with more than k
samples in the batch keeps its newest k. ``head[g]`` is the slot the next value of group g
goes to and ``fill[g]`` how many slots hold values (at most k); both are int64 [G] and are
updated in place. Returns ``fill`` so that callers see which buffers are full (``fill == k``).
No Python loop over groups or samples on any backend but "reference".
"""

from __future__ import annotations

import torch
from torch import Tensor

from ceag.ops import reference
from ceag.ops._checks import INDEX_DTYPES, check_index_ranges, check_tensor
from ceag.ops._registry import OpFamily, dispatch, register_family

__all__ = ["replay_buffer_update"]

BUFFER_DTYPES = (torch.bool, torch.uint8, torch.float32, torch.float64)


def _fake_replay_buffer_update_(buffer, head, fill, group, values):
    return None


# In place, so no autograd: the buffers hold detached per-sample statistics.
REPLAY_BUFFER = register_family(
    OpFamily(
        name="replay_buffer",
        compiled=("replay_buffer_update_",),
        triton=("replay_buffer_update_triton_",),
        triton_module="ceag.kernels.replay_buffer",
        reference=reference.replay_buffer_update_,
        fake=(_fake_replay_buffer_update_,),
    )
)


def _validate(buffer, head, fill, group, values) -> Tensor:
    check_tensor("buffer", buffer, dim=2, dtypes=BUFFER_DTYPES)
    device = buffer.device
    num_groups, k = buffer.shape
    if k < 1:
        raise ValueError(f"buffer must have k >= 1 slots per group, got shape {tuple(buffer.shape)}")
    for name, t in (("head", head), ("fill", fill)):
        check_tensor(name, t, dim=1, dtypes=(torch.int64,), device=device, device_of="buffer")
        if t.shape[0] != num_groups:
            raise ValueError(f"{name} must have length num_groups={num_groups}, got {t.shape[0]}")
    check_tensor("group", group, dim=1, dtypes=INDEX_DTYPES, device=device, device_of="buffer")
    check_tensor("values", values, dim=1, device=device, device_of="buffer")
    if values.shape[0] != group.shape[0]:
        raise ValueError(f"values must have length N={group.shape[0]} (group's), got {values.shape[0]}")
    if values.dtype != buffer.dtype:
        # Correctness bits go into any buffer; anything else must match the buffer exactly.
        if values.dtype != torch.bool:
            raise TypeError(f"values must have the buffer's dtype {buffer.dtype} (or bool), got {values.dtype}")
        values = values.to(buffer.dtype)
    return values


def replay_buffer_update(
    buffer: Tensor,
    head: Tensor,
    fill: Tensor,
    group: Tensor,
    values: Tensor,
    *,
    backend: str | None = None,
) -> Tensor:
    """Push ``values`` into the ring buffers of their ``group`` (in place); return ``fill``.

    Args:
        buffer: [G, k] bool, uint8, float32 or float64, k >= 1; updated in place.
        head: [G] int64 in [0, k), next write slot of each group; updated in place.
        fill: [G] int64 in [0, k], entries held by each group; updated in place.
            Non-contiguous buffer/head/fill are accepted (updated through contiguous copies).
        group: [N] int64/int32 group ids in [0, G).
        values: [N] of the buffer's dtype (bool values are accepted for any buffer).
        backend: "cpp", "cuda", "triton" or "reference"; default by device / $CEAG_BACKEND.
    """
    values = _validate(buffer, head, fill, group, values)
    group, values = group.contiguous(), values.contiguous()  # the kernels read them densely
    route = dispatch(REPLAY_BUFFER, backend, buffer.device)
    if route.backend != "cpp" and not torch.compiler.is_compiling():
        # The C++ kernel checks its own. Out-of-range head/fill would make the others write
        # out of bounds (the Triton kernel computes slots from head without a bounds check).
        k = buffer.shape[1]
        check_index_ranges(("group", group, buffer.shape[0], False), ("head", head, k, False), ("fill", fill, k, True))
    if not (buffer.is_contiguous() and head.is_contiguous() and fill.is_contiguous()):
        # The kernels index head/fill (and the C++ one the buffer) as dense arrays: update
        # contiguous copies, then write them back, so the result equals the contiguous call's.
        bufc, headc, fillc = buffer.contiguous(), head.contiguous(), fill.contiguous()
        replay_buffer_update(bufc, headc, fillc, group, values, backend=route.backend)
        for dst, src in ((buffer, bufc), (head, headc), (fill, fillc)):
            if dst is not src:
                dst.copy_(src)
        return fill
    if route.backend == "reference":
        REPLAY_BUFFER.reference(buffer, head, fill, group, values)
    else:
        route.ops[0](buffer, head, fill, group, values)
    return fill
