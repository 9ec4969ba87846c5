"""Which tiles of a mask hold a kept entry: the occupancy bitmap and per-block tile lists that
let the Triton masked-linear kernels skip empty tiles, cached per mask tensor."""

from __future__ import annotations

import weakref

import torch
import triton

__all__ = ["clear_cache", "occupancy", "tile_lists"]


def occupancy(mask: torch.Tensor, block_n: int, block_k: int) -> torch.Tensor:
    """[cdiv(N, block_n), cdiv(K, block_k)] bool: True where the mask block keeps an entry."""
    n, k = mask.shape
    nb, kb = triton.cdiv(n, block_n), triton.cdiv(k, block_k)
    m = mask.view(torch.uint8) if mask.dtype == torch.bool else (mask != 0).view(torch.uint8)
    if nb * block_n != n or kb * block_k != k:
        m = torch.nn.functional.pad(m, (0, kb * block_k - k, 0, nb * block_n - n))
    return m.reshape(nb, block_n, kb, block_k).amax(dim=(1, 3)) != 0


def tile_lists(occ: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each block along the other dimension of ``occ``, its non-empty blocks along ``dim``.

    Returns ``(count, index)``: ``count[j]`` (int32) non-empty blocks, listed in ascending
    order in ``index[j, :count[j]]`` (int32, contiguous; the rest is padding).
    """
    occ = occ if dim == 1 else occ.t()
    count = occ.sum(dim=1, dtype=torch.int32)
    index = torch.argsort((~occ).to(torch.uint8), dim=1, stable=True).to(torch.int32)
    return count.contiguous(), index.contiguous()


_CACHE_SIZE = 32
_cache: dict[tuple, tuple] = {}


def _cacheable(t: torch.Tensor) -> bool:
    """Plain tensors outside of any tracing or dispatch mode (FakeTensor, functionalization)."""
    return type(t) is torch.Tensor and not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0


def _mask_tiles(mask: torch.Tensor, block_n: int, block_k: int, kind: str, skip: bool):
    """(occ uint8 [nb, kb], or (count, index) lists along the reduction) for one kernel.

    ``kind``: "fwd" (lists of K-blocks per N-block), "grad_input" (N-blocks per K-block) or
    "grad_weight" (the bitmap itself). ``skip=False`` marks every tile non-empty (tests).
    """

    def compute():
        if skip:
            occ = occupancy(mask, block_n, block_k)
        else:
            n, k = mask.shape
            occ = torch.ones(triton.cdiv(n, block_n), triton.cdiv(k, block_k), dtype=torch.bool, device=mask.device)
        if kind == "grad_weight":
            return (occ.to(torch.uint8).contiguous(),)
        return tile_lists(occ, dim=1 if kind == "fwd" else 0)

    if not _cacheable(mask):
        return compute()
    try:
        state = (mask.data_ptr(), mask._version, tuple(mask.shape), tuple(mask.stride()), mask.device)
    except RuntimeError:  # a traced tensor without real storage
        return compute()
    key = (id(mask), kind, block_n, block_k, skip)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is mask and hit[1] == state:
        return hit[2]
    value = compute()
    if len(_cache) >= _CACHE_SIZE:
        _cache.pop(next(iter(_cache)))
    _cache[key] = (weakref.ref(mask), state, value)
    return value


def clear_cache() -> None:
    """Drop every cached occupancy bitmap and tile list."""
    _cache.clear()
