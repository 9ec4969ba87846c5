"""``MaskedLinear``: a drop-in ``nn.Linear`` whose weight is multiplied by a bool mask buffer."""

from __future__ import annotations

import torch
from torch import nn

from ceag.nn._mask import check_mask
from ceag.ops.masked_linear import MaskLayout, cpu_layout, masked_linear

__all__ = ["MaskedLinear"]


class MaskedLinear(nn.Linear):
    """``y = x @ (weight * mask).T + bias`` through :func:`ceag.ops.masked_linear`.

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

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
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

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.4f}"
