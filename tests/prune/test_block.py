"""ceag.prune.block_magnitude_mask: block-structured magnitude pruning."""

from __future__ import annotations

import pytest
import torch

from ceag.prune import block_magnitude_mask


def _blocks(mask, bh, bw):
    n, k = mask.shape
    return [[mask[i : i + bh, j : j + bw] for j in range(0, k, bw)] for i in range(0, n, bh)]


@pytest.mark.parametrize("shape, block", [((64, 96), (32, 32)), ((70, 50), (16, 16)), ((33, 17), (8, 4)), ((5, 5), (32, 32))])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 1.0])
def test_whole_blocks_and_block_count(shape, block, sparsity):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    mask = block_magnitude_mask(w, sparsity, block)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    blocks = [b for row in _blocks(mask, *block) for b in row]
    assert all(b.all() or not b.any() for b in blocks)  # every block kept or pruned whole
    assert sum(not b.any() for b in blocks) == round(sparsity * len(blocks))


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_keeps_the_largest_norm_blocks(norm):
    w = torch.full((4, 6), 0.1)
    w[0:2, 0:2] = 5.0  # block (0, 0): the largest
    w[2:4, 4:6] = -3.0  # block (1, 2): second (sign does not matter)
    mask = block_magnitude_mask(w, 4 / 6, (2, 2), norm=norm)
    want = torch.zeros(4, 6, dtype=torch.bool)
    want[0:2, 0:2] = want[2:4, 4:6] = True
    assert torch.equal(mask, want)


def test_l1_and_l2_rank_differently():
    w = torch.zeros(1, 4)
    w[0, 0:2] = torch.tensor([1.0, 1.0])  # L1 2, L2 sqrt(2)
    w[0, 2:4] = torch.tensor([1.6, 0.0])  # L1 1.6, L2 1.6
    assert block_magnitude_mask(w, 0.5, (1, 2), norm="l1")[0].tolist() == [True, True, False, False]
    assert block_magnitude_mask(w, 0.5, (1, 2), norm="l2")[0].tolist() == [False, False, True, True]


def test_ties_prune_the_earlier_block_and_are_deterministic():
    w = torch.ones(2, 8)
    mask = block_magnitude_mask(w, 0.5, (2, 2))
    assert mask[0].tolist() == [False] * 4 + [True] * 4
    assert torch.equal(mask, block_magnitude_mask(w, 0.5, (2, 2)))


def test_bf16_weight_and_no_grad_needed():
    w = torch.randn(32, 32, dtype=torch.bfloat16, requires_grad=True)
    mask = block_magnitude_mask(w, 0.5, (8, 8))
    assert not mask.requires_grad and int(mask.sum()) == 32 * 32 // 2


@pytest.mark.parametrize(
    "args, error",
    [
        ((torch.randn(3), 0.5), "2-D"),
        ((torch.randn(3, 3), 1.5), "sparsity"),
        ((torch.randn(3, 3), 0.5, (0, 2)), "block"),
    ],
)
def test_validation(args, error):
    with pytest.raises(ValueError, match=error):
        block_magnitude_mask(*args)
    with pytest.raises(ValueError, match="norm"):
        block_magnitude_mask(torch.randn(3, 3), 0.5, norm="linf")
