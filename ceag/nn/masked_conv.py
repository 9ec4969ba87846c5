"""``MaskedConv2d``: a drop-in ``nn.Conv2d`` whose weight is multiplied by a bool mask buffer."""

from __future__ import annotations

import torch
from torch import nn

from ceag.nn._mask import check_mask

__all__ = ["MaskedConv2d"]


class MaskedConv2d(nn.Conv2d):
    """``conv2d(x, weight * mask, bias)`` with every ``nn.Conv2d`` option (stride, padding and
    padding modes, dilation, groups). Pruned weights are absent: exactly 0 even if NaN/Inf.

    ``mask`` is a bool buffer of weight's shape ``[out, in / groups, kh, kw]`` (all True by
    default), saved in the state dict. The product ``weight * mask`` is part of the autograd
    graph, so the gradient of ``weight`` is exactly zero where the mask is False: a pruned
    weight that is zero stays zero under any optimizer whose update is zero for a zero gradient
    and zero state (see :func:`ceag.prune.mask_optimizer_state_`). The weight Parameter itself
    is not zeroed by the mask; :func:`ceag.prune.magnitude_prune` does that.

    Unlike :class:`~ceag.nn.MaskedLinear` there is no sparse kernel: the forward is a dense
    convolution of the masked weight (one extra elementwise product per call).
    """

    mask: torch.Tensor

    def __init__(self, *args, mask: torch.Tensor | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.ones(self.weight.shape, dtype=torch.bool, device=self.weight.device))
        if mask is not None:
            self.set_mask(mask)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mask: torch.Tensor | None = None) -> MaskedConv2d:
        """A MaskedConv2d sharing ``conv``'s weight and bias Parameters (no copy)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        w = conv.weight
        out = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
            dtype=w.dtype,
        )
        out.weight = w
        out.bias = conv.bias
        out.mask = torch.ones(w.shape, dtype=torch.bool, device=w.device)
        out.train(conv.training)
        if mask is not None:
            out.set_mask(mask)
        return out

    def set_mask(self, mask: torch.Tensor) -> None:
        """Copy ``mask`` (bool, weight's shape) into the mask buffer."""
        check_mask(mask, self.weight)
        with torch.no_grad():
            self.mask.copy_(mask)

    @property
    def density(self) -> float:
        """Fraction of weights kept."""
        n = self.mask.numel()
        return float(self.mask.count_nonzero()) / n if n else 1.0

    @property
    def num_kept(self) -> int:
        return int(self.mask.count_nonzero())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # where, not weight * mask: a pruned weight is absent, so a NaN/Inf there stays out of
        # the output (NaN * 0 is NaN), as in MaskedLinear. Same gradient: 0 where pruned.
        return self._conv_forward(x, torch.where(self.mask, self.weight, 0), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.4f}"
