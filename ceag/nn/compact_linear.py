"""``CompactLinear``: a masked linear layer that stores only its kept weights.

The kept weights are one Parameter ``values`` [nnz] (CSR order); the structure is int32
buffers (``row_ptr``, ``col_idx`` saved in the state dict; the CSC arrays derived). Forward
and backward run :func:`ceag.ops.compact_linear` in O(nnz · B), so the gradient and every
optimizer state are nnz-sized: at 99% sparsity a 4096² layer trains with ~1/100 of the memory
and work of a dense-parameter one.

A mask change (:meth:`set_mask`, called by the pruning functions) repacks ``values`` in place
(the Parameter object stays the same, so an optimizer built before keeps it) and, given the
optimizer, remaps its state exactly: a kept weight keeps its momentum / Adam moments, a pruned
one loses them, a newly kept one starts at zero. :meth:`to_masked` / :meth:`from_masked`
convert to and from the dense-parameter :class:`~ceag.nn.MaskedLinear` sharing the Parameter;
``weight`` and ``mask`` are dense views computed on demand (for export and reports, not for
the training step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ceag.nn._mask import check_mask
from ceag.ops.compact_linear import CompactLayout, compact_linear

__all__ = ["CompactLinear", "remap_values_"]

_DERIVED = ("col_ptr", "row_idx", "csc_to_csr")  # rebuilt from row_ptr / col_idx, not saved


class CompactLinear(nn.Module):
    """``y = x @ W.T + bias`` with W [out, in] stored as its kept entries only.

    Args: as ``nn.Linear``, plus ``mask`` (bool [out, in], default all kept). Initialisation is
    nn.Linear's (Kaiming-uniform), restricted to the kept positions.
    """

    values: nn.Parameter
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    col_ptr: torch.Tensor
    row_idx: torch.Tensor
    csc_to_csr: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        dense = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if mask is None:
            mask = torch.ones(out_features, in_features, dtype=torch.bool, device=dense.weight.device)
        check_mask(mask, dense.weight)
        layout = CompactLayout.from_mask(mask.to(dense.weight.device))
        self.values = nn.Parameter(layout.gather(dense.weight.detach()))
        self.bias = dense.bias
        self._set_layout(layout)

    # -- conversions -----------------------------------------------------------------------

    @classmethod
    def from_masked(cls, layer: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> CompactLinear:
        """The compact form of a :class:`~ceag.nn.MaskedLinear`, reusing its weight Parameter
        as ``values`` (repacked in place) and its bias; ``optimizer``'s state for the weight
        is gathered to the kept positions."""
        weight = layer.weight
        layout = CompactLayout.from_mask(layer.mask)
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out.in_features, out.out_features = layer.in_features, layer.out_features
        positions = layout.positions()
        _repack_(weight, optimizer, lambda t: t.reshape(-1)[positions.to(t.device)])
        out.values = weight
        out.bias = layer.bias
        out._set_layout(layout)
        out.train(layer.training)
        return out

    def to_masked(self, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
        """The dense-parameter :class:`~ceag.nn.MaskedLinear` of this layer, reusing ``values``
        as its weight (scattered in place); ``optimizer``'s state is scattered likewise."""
        from ceag.nn.masked_linear import MaskedLinear

        layout, param = self.layout, self.values
        mask = layout.mask()
        _repack_(param, optimizer, layout.to_dense)
        out = MaskedLinear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        out.weight = param
        out.bias = self.bias
        out.mask = mask
        out._layout, out._layout_key = None, None
        out.train(self.training)
        return out

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: torch.Tensor) -> CompactLinear:
        """A new CompactLinear holding ``linear``'s weights at ``mask`` (copies; ``linear`` is
        left as it is)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        out = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device, dtype=w.dtype, mask=mask
        )
        with torch.no_grad():
            out.values.copy_(out.layout.gather(w.detach()))
            if linear.bias is not None:
                out.bias.copy_(linear.bias.detach())
        return out

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the dense weight (zeros at pruned positions; copies), e.g.
        to export the pruned model to code that knows nothing of ceag."""
        out = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=self.values.device, dtype=self.values.dtype
        )
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.bias is not None:
                out.bias.copy_(self.bias.detach())
        return out

    # -- structure -------------------------------------------------------------------------

    @property
    def layout(self) -> CompactLayout:
        return CompactLayout(
            self.row_ptr, self.col_idx, self.col_ptr, self.row_idx, self.csc_to_csr, (self.out_features, self.in_features)
        )

    def _set_layout(self, layout: CompactLayout) -> None:
        for name, t in zip(("row_ptr", "col_idx", *_DERIVED), layout.tensors(), strict=True):
            if name in self._buffers:
                self._buffers[name] = t
            else:
                self.register_buffer(name, t, persistent=name not in _DERIVED)

    @property
    def num_kept(self) -> int:
        return int(self.col_idx.numel())

    @property
    def density(self) -> float:
        n = self.out_features * self.in_features
        return self.num_kept / n if n else 1.0

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight [out, in] (a new tensor, detached): for export and reports."""
        return self.layout.to_dense(self.values.detach())

    @property
    def mask(self) -> torch.Tensor:
        """The dense bool mask [out, in] (a new tensor)."""
        return self.layout.mask()

    def set_mask(self, mask: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Keep the weights at ``mask`` (bool [out, in]): kept ones keep their values (and, with
        ``optimizer``, their optimizer state), newly kept ones start at 0. ``values`` is resized
        in place; pass the optimizer that holds it, or its state no longer fits."""
        check_mask(mask, torch.empty(self.out_features, self.in_features, device="meta"))
        new = CompactLayout.from_mask(mask.to(self.row_ptr.device))
        remap_values_(self.values, self.layout, new, optimizer)
        self._set_layout(new)

    # -- module ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return compact_linear(x, self.values, self.layout, self.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # The saved structure sets the sizes: resize values and the layout before the copy.
        row_ptr, col_idx = state_dict.get(prefix + "row_ptr"), state_dict.get(prefix + "col_idx")
        if row_ptr is not None and col_idx is not None:
            layout = CompactLayout.from_csr(
                row_ptr.to(self.row_ptr.device), col_idx.to(self.row_ptr.device), (self.out_features, self.in_features)
            )
            self._set_layout(layout)
            with torch.no_grad():
                self.values.data = self.values.new_empty(layout.nnz)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"density={self.density:.4f}, storage=compact"
        )


def _repack_(param: torch.Tensor, optimizer: torch.optim.Optimizer | None, fn) -> None:
    """``param.data = fn(param.data)`` and the same for each of ``optimizer``'s state tensors of
    param's shape (momentum, Adam moments); the gradient is dropped."""
    old_shape = param.shape
    with torch.no_grad():
        param.data = fn(param.data).contiguous()
    param.grad = None
    state = optimizer.state.get(param) if optimizer is not None else None
    for key, value in (state or {}).items():
        if isinstance(value, torch.Tensor) and value.shape == old_shape:
            state[key] = fn(value).contiguous()


def remap_values_(
    values: torch.Tensor, old: CompactLayout, new: CompactLayout, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Re-index ``values`` (and ``optimizer``'s state of it) from layout ``old`` to ``new`` of
    the same shape, in place: entries kept in both keep their numbers, the others are 0."""
    if old.shape != new.shape:
        raise ValueError(f"layouts differ in shape: {old.shape} and {new.shape}")
    old_pos, new_pos = old.positions(), new.positions()
    if old_pos.numel():  # position lists are ascending: each new position's index in the old
        src = torch.searchsorted(old_pos, new_pos).clamp_(max=old_pos.numel() - 1)
        hit = old_pos[src] == new_pos
    else:
        src, hit = torch.zeros_like(new_pos), torch.zeros_like(new_pos, dtype=torch.bool)

    def remap(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros(new.nnz)
        out[hit.to(t.device)] = t[src[hit].to(t.device)]
        return out

    _repack_(values, optimizer, remap)
