"""The batches of an epoch: a pure function of (seed, epoch), made one batch at a time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch``: ``randperm`` of a generator seeded by (seed, epoch)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + 1) % (2**63 - 1))
    return torch.randperm(num_samples, generator=gen)


def batches(
    dataset: Any,
    order: torch.Tensor | None,
    batch_size: int,
    start: int = 0,
    part: tuple[int, int] | None = None,
    num_workers: int = 0,
) -> Iterator[tuple]:
    """Batches of ``dataset`` at ``order`` (None: in index order), from batch ``start``;
    with ``part=(rank, world)``, that rank's contiguous slice of each (data-parallel).

    Lazy: one batch's indices at a time, never a list over the epoch. A ``TensorDataset``
    is gathered in whole batches (in index order: row slices of its tensors, no copy);
    another dataset goes through a DataLoader whose batch sampler makes each batch's index
    list only when the loader asks for it.
    """
    chunks = IndexBatches(len(dataset) if order is None else order, batch_size, start, part)
    if isinstance(dataset, TensorDataset):
        for idx in chunks:
            if isinstance(idx, slice):
                yield tuple(t[idx].contiguous() for t in dataset.tensors)  # views, unless not contiguous
            else:
                yield tuple(t[idx] for t in dataset.tensors)
        return
    yield from DataLoader(dataset, batch_sampler=ListBatches(chunks), num_workers=num_workers)


class IndexBatches:
    """The index batches of an epoch, made one at a time: batch ``b`` is ``order[b·B:(b+1)·B]``
    (``order`` a tensor of indices, or an int n for ``0..n-1``: then a ``slice``), from batch
    ``start`` on; with ``part=(rank, world)``, each batch's contiguous share of that rank."""

    def __init__(self, order: torch.Tensor | int, batch_size: int, start: int = 0, part: tuple[int, int] | None = None):
        self.order, self.batch_size, self.start, self.part = order, batch_size, start, part
        self.n = order if isinstance(order, int) else len(order)

    def __len__(self) -> int:
        return max(0, math.ceil(self.n / self.batch_size) - self.start)

    def __iter__(self) -> Iterator[torch.Tensor | slice]:
        for lo in range(self.start * self.batch_size, self.n, self.batch_size):
            hi = min(lo + self.batch_size, self.n)
            if self.part is not None:  # as tensor_split(world)[rank] of the batch
                rank, world = self.part
                q, r = divmod(hi - lo, world)
                lo, hi = lo + rank * q + min(rank, r), lo + (rank + 1) * q + min(rank + 1, r)
            yield slice(lo, hi) if isinstance(self.order, int) else self.order[lo:hi]


class ListBatches:
    """A DataLoader ``batch_sampler`` over :class:`IndexBatches`: index lists made lazily."""

    def __init__(self, batches: IndexBatches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.batches:
            yield list(range(idx.start, idx.stop)) if isinstance(idx, slice) else idx.tolist()
