"""Packing: first-fit bins, block-diagonal causal mask, restarting positions."""

from itertools import accumulate

import torch

from longctx.data.packing import pack_greedy, packed_attention_mask, position_ids


def test_pack_greedy_respects_capacity_and_keeps_every_sample():
    lengths = [5, 9, 3, 7, 2, 10, 1, 6]
    bins = pack_greedy(lengths, capacity=10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert bins == pack_greedy(lengths, capacity=10)  # deterministic
    assert len(bins) == 5  # first-fit: [5,3,2],[9,1],[7],[10],[6]


def test_mask_is_block_diagonal_causal():
    seq_lens = [3, 1, 4]
    m = packed_attention_mask(seq_lens)
    assert m.shape == (8, 8) and m.dtype == torch.bool
    seg = [0, 0, 0, 1, 2, 2, 2, 2]
    for i in range(8):
        for j in range(8):
            assert bool(m[i, j]) == (seg[i] == seg[j] and j <= i)
    # no True anywhere across samples
    bounds = [0, *accumulate(seq_lens)]
    for a, b in zip(bounds, bounds[1:]):
        assert not m[a:b, :a].any() and not m[a:b, b:].any()


def test_positions_restart_per_sample():
    seq_lens = [3, 1, 4]
    assert position_ids(seq_lens) == [0, 1, 2, 0, 0, 1, 2, 3]


def test_mask_matches_sdpa_per_sample():
    """Attention over a packed sequence with the mask equals attention per sample."""
    torch.manual_seed(0)
    seq_lens = [4, 2, 5]
    q, k, v = (torch.randn(1, 2, sum(seq_lens), 8) for _ in range(3))
    packed = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=packed_attention_mask(seq_lens))
    bounds = [0, *accumulate(seq_lens)]
    for a, b in zip(bounds, bounds[1:]):
        alone = torch.nn.functional.scaled_dot_product_attention(q[..., a:b, :], k[..., a:b, :], v[..., a:b, :], is_causal=True)
        torch.testing.assert_close(packed[..., a:b, :], alone)
