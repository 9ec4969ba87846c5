"""ceag.models: the reference architectures, including the paper's CIFAR-style ResNets."""

from __future__ import annotations

import pytest
import torch

from ceag.models import build_model
from ceag.nn import MaskedConv2d
from ceag.prune import magnitude_prune, sparsify, sparsity_report


@pytest.mark.parametrize("arch, params", [("resnet18", 11_173_962), ("resnet56", 855_770)])
def test_cifar_resnets_match_the_published_sizes_and_prune(arch, params):
    torch.manual_seed(0)
    m = build_model((3, 32, 32), 10, arch)
    assert sum(p.numel() for p in m.parameters()) == params  # He et al. 2016 / the usual CIFAR ResNet-18
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    sparsify(m)
    assert sum(isinstance(x, MaskedConv2d) for x in m.modules()) > 10
    magnitude_prune(m, 0.9)
    assert abs(sparsity_report(m).masked_overall.sparsity - 0.9) < 0.01
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 10)  # any input size (global pooling)


def test_resnet_needs_images():
    with pytest.raises(ValueError, match="needs \\(C, H, W\\) inputs"):
        build_model((12,), 2, "resnet56")
