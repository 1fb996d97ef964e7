"""Greedy packing of samples into sequences, and the masks that keep packed samples apart.

A packed sequence concatenates several samples. To train on it exactly as if each sample
were alone, attention must not cross sample boundaries and positions must restart:

* ``position_ids`` restart at 0 at every sample start (RoPE sees each sample from 0);
* ``packed_attention_mask(seq_lens)`` is the (L, L) block-diagonal causal mask for SDPA/eager;
* transformers' flash-attention path derives varlen boundaries from the restarting
  ``position_ids`` (as with ``DataCollatorWithFlattening``).

The first label of every sample is -100: with the usual shift-by-one loss it would
otherwise be predicted from the previous sample's last token.
"""

from __future__ import annotations

import torch


def pack_greedy(lengths: list[int], capacity: int, min_length: int = 1) -> list[list[int]]:
    """First-fit packing in the given order. Returns bins of sample indices (order kept).

    A bin is closed once its free space drops below ``min_length`` (no remaining sample can
    fit), which keeps the scan short. Deterministic: depends only on ``lengths`` and order.
    """
    bins: list[list[int]] = []
    free: list[int] = []
    open_bins: list[int] = []  # indices into bins, in creation order
    for i, n in enumerate(lengths):
        if n > capacity:
            raise ValueError(f"sample {i} has {n} tokens, more than the packing capacity {capacity}")
        for b in open_bins:
            if free[b] >= n:
                break
        else:
            b = len(bins)
            bins.append([])
            free.append(capacity)
            open_bins.append(b)
        bins[b].append(i)
        free[b] -= n
        if free[b] < max(min_length, 1):
            open_bins.remove(b)
    return bins


def position_ids(seq_lens: list[int]) -> list[int]:
    """0..n-1 for each packed sample, concatenated."""
    return [p for n in seq_lens for p in range(n)]


def packed_attention_mask(seq_lens: list[int]) -> torch.Tensor:
    """Bool (L, L) mask, True where query i may attend to key j: same sample and j <= i."""
    seg = torch.repeat_interleave(torch.arange(len(seq_lens)), torch.tensor(seq_lens, dtype=torch.long))
    same = seg[:, None] == seg[None, :]
    length = int(sum(seq_lens))
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return same & causal
