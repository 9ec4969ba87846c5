"""Small reference models for the bundled data sets.

``build_model`` picks by input shape: an MLP for tabular data ``(F,)`` (the ALGORITHM.md
Adult setting is 108→512→512→2) and a small CNN for images ``(C, H, W)`` (Fashion-MNIST).
Both are plain ``nn.Linear`` / ``nn.Conv2d`` models; :func:`ceag.prune.sparsify` turns them
into masked layers (first conv and last linear kept dense).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["ARCHITECTURES", "build_model", "mlp", "small_cnn"]

ARCHITECTURES = ("auto", "mlp", "cnn")


def mlp(in_features: int, num_classes: int, hidden: Sequence[int] = (512, 512)) -> nn.Sequential:
    """``in_features → hidden[0] → … → num_classes`` with ReLU between layers."""
    if in_features < 1 or num_classes < 2:
        raise ValueError(f"mlp needs in_features >= 1 and num_classes >= 2, got {in_features}, {num_classes}")
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden sizes must be >= 1, got {tuple(hidden)}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn(in_channels: int, num_classes: int, width: int = 32, hidden: int = 256) -> nn.Sequential:
    """Two conv blocks (``width``, ``2·width`` channels, 3x3, max-pool) and a two-layer head.

    For 28x28 inputs: 28 → 14 → 7, so the head sees ``2·width·7·7`` features (adaptive
    pooling makes any input size ≥ 4 work).
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(7),
        nn.Flatten(),
        nn.Linear(2 * width * 49, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def build_model(
    input_shape: Sequence[int], num_classes: int, arch: str = "auto", hidden: Sequence[int] = (512, 512)
) -> nn.Module:
    """A model for inputs of ``input_shape`` (without the batch dimension).

    ``arch``: "mlp" (flat inputs), "cnn" (``(C, H, W)`` inputs) or "auto" (by the shape).
    ``hidden``: the MLP's hidden widths (the CNN's head width is ``hidden[0]``).
    """
    shape = tuple(int(s) for s in input_shape)
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}; got {arch!r}")
    if arch == "auto":
        arch = "cnn" if len(shape) == 3 else "mlp"
    if arch == "cnn":
        if len(shape) != 3:
            raise ValueError(f"arch 'cnn' needs (C, H, W) inputs, got input_shape {shape}")
        return small_cnn(shape[0], num_classes, hidden=int(hidden[0]) if hidden else 256)
    if len(shape) != 1:
        raise ValueError(f"arch 'mlp' needs flat (F,) inputs, got input_shape {shape}; use arch='cnn'")
    return mlp(shape[0], num_classes, hidden)
