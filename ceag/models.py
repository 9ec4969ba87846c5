"""Small reference models for the bundled data sets.

``build_model`` picks by input shape: an MLP for tabular data ``(F,)`` (the ALGORITHM.md
Adult setting is 108→512→512→2) and a small CNN for images ``(C, H, W)`` (Fashion-MNIST).
Both are plain ``nn.Linear`` / ``nn.Conv2d`` models; :func:`ceag.prune.sparsify` turns them
into masked layers (first conv and last linear kept dense).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["ARCHITECTURES", "build_model", "cifar_resnet", "mlp", "small_cnn"]

ARCHITECTURES = ("auto", "mlp", "cnn", "resnet18", "resnet56")


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
    if arch in ("resnet18", "resnet56"):
        if len(shape) != 3:
            raise ValueError(f"arch {arch!r} needs (C, H, W) inputs, got input_shape {shape}")
        return cifar_resnet(arch, shape[0], num_classes)
    if len(shape) != 1:
        raise ValueError(f"arch 'mlp' needs flat (F,) inputs, got input_shape {shape}; use arch='cnn'")
    return mlp(shape[0], num_classes, hidden)


class _BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1-conv) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


#: (blocks per stage, stage widths) of the CIFAR-style ResNets of the paper's image runs:
#: ResNet-18 with a 3x3 stem (no max-pool), ResNet-56 as in He et al. (2016), section 4.2.
_RESNETS = {"resnet18": ((2, 2, 2, 2), (64, 128, 256, 512)), "resnet56": ((9, 9, 9), (16, 32, 64))}


def cifar_resnet(name: str, in_channels: int, num_classes: int) -> nn.Sequential:
    """A CIFAR-style ResNet ("resnet18" or "resnet56"): 3x3 stem, basic blocks, stride 2
    between stages, global average pooling and one linear layer. No pretrained weights."""
    if name not in _RESNETS:
        raise ValueError(f"name must be one of {', '.join(_RESNETS)}; got {name!r}")
    blocks, widths = _RESNETS[name]
    layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    cin = widths[0]
    for stage, (n, w) in enumerate(zip(blocks, widths)):
        for i in range(n):
            layers.append(_BasicBlock(cin, w, 2 if stage > 0 and i == 0 else 1))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)
