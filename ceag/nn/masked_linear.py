"""``MaskedLinear``: a drop-in ``nn.Linear`` whose weight is multiplied by a bool mask buffer."""

from __future__ import annotations

import torch
from torch import nn

from ceag.nn._mask import check_mask
from ceag.ops.masked_linear import MaskLayout, cpu_layout, masked_linear

__all__ = ["COMPACT_BELOW_DENSITY", "STORAGES", "MaskedLinear"]

#: How a masked linear layer stores its weight: "dense" (a dense Parameter, the mask applied
#: by the kernel), "compact" (only the kept weights: :class:`ceag.nn.CompactLinear`) or
#: "auto" (dense until pruning takes the density below :data:`COMPACT_BELOW_DENSITY`, then
#: compact; ceag.prune converts the layer, keeping its Parameter and optimizer state).
STORAGES = ("dense", "compact", "auto")

#: Density under which "auto" storage turns a layer compact. Measured one training step
#: (forward, backward, SGD with momentum) on the 2-core AMD EPYC (bench/results/cpu-compact_linear.md):
#: at 50% density the compact layer beat the dense-parameter one in all four shapes (B = 64 / 256,
#: 1024² / 4096²: 4.7 vs 7.1, 12.3 vs 16.7, 91 vs 188, 195 vs 275 ms), and it wins by more
#: at every higher sparsity. Not measured on an Intel Xeon yet.
COMPACT_BELOW_DENSITY: float = 0.5


class MaskedLinear(nn.Linear):
    """``y = x @ (weight * mask).T + bias`` through :func:`ceag.ops.masked_linear`.

    ``storage="compact"`` builds a :class:`~ceag.nn.CompactLinear` instead (only the kept
    weights stored); ``"auto"`` marks this layer to become one once pruned below
    :data:`COMPACT_BELOW_DENSITY` (see :data:`STORAGES`).

    ``mask`` is a bool buffer of weight's shape (all True by default), saved in the state dict.
    The mask's compressed :class:`~ceag.ops.MaskLayout` (used by the sparse CPU kernel) is
    cached and rebuilt on the next forward after the mask changes: through :meth:`set_mask`,
    an in-place edit, ``load_state_dict`` (which converts a mask of another dtype, nonzero =
    kept: e.g. torch.nn.utils.prune's float masks) or a device move (tracked by the buffer's
    version counter and data pointer). Inside ``torch.compile`` that check cannot run: a compiled
    module uses the layout cached by the last eager forward or :meth:`set_mask`, so after
    editing the mask in place call :meth:`refresh_layout` (or use :meth:`set_mask`).
    """

    mask: torch.Tensor

    def __new__(cls, *args, storage: str = "dense", **kwargs):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if storage == "compact":  # not a MaskedLinear, so __init__ below does not run on it
            from ceag.nn.compact_linear import CompactLinear

            return CompactLinear(*args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        mask: torch.Tensor | None = None,
        storage: str = "dense",
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.storage = storage  # "dense" or "auto" ("compact" returned a CompactLinear)
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=self.weight.device))
        self._layout: MaskLayout | None = None
        self._layout_key: tuple | None = None
        if mask is not None:
            self.set_mask(mask)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor | None = None) -> MaskedLinear:
        """A MaskedLinear sharing ``linear``'s weight and bias Parameters (no copy)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        out = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device="meta",
            dtype=w.dtype,
        )
        out.weight = w
        out.bias = linear.bias
        out.mask = torch.ones(w.shape, dtype=torch.bool, device=w.device)
        out._layout, out._layout_key = None, None
        if mask is not None:
            out.set_mask(mask)
        return out

    def set_mask(self, mask: torch.Tensor) -> None:
        """Copy ``mask`` (bool, weight's shape) into the mask buffer and refresh the layout."""
        check_mask(mask, self.weight)
        with torch.no_grad():
            self.mask.copy_(mask)
        self.refresh_layout()

    @property
    def density(self) -> float:
        """Fraction of weights kept."""
        n = self.mask.numel()
        return float(self.mask.count_nonzero()) / n if n else 1.0

    def refresh_layout(self) -> MaskLayout | None:
        """The mask's layout, rebuilt if the mask changed since it was cached.

        None when the layout is not used: mask not on CPU or density at or above
        :data:`ceag.ops.masked_linear.DENSE_THRESHOLD` (the kernel's dense path).
        """
        mask = self.mask
        key = (mask.device, mask.data_ptr(), mask._version, tuple(mask.shape))
        if key != self._layout_key:
            self._layout, self._layout_key = cpu_layout(mask), key
        return self._layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            layout = self._layout
            if layout is not None and (layout.device != self.mask.device or layout.shape != tuple(self.mask.shape)):
                layout = None
        else:
            layout = self.refresh_layout()
        return masked_linear(x, self.weight, self.mask, self.bias, layout=layout)

    @property
    def num_kept(self) -> int:
        return int(self.mask.count_nonzero())

    def to_compact(self, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
        """This layer as a :class:`~ceag.nn.CompactLinear` sharing its Parameters (the weight
        becomes ``values``; ``optimizer``'s state for it is gathered likewise)."""
        from ceag.nn.compact_linear import CompactLinear

        return CompactLinear.from_masked(self, optimizer)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.4f}" + (", storage=auto" if self.storage == "auto" else "")
