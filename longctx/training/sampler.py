"""Data cursor: which training rows each process reads, as a pure function of the global slot."""

from __future__ import annotations

import torch


def micro_batch_slots(step: int, accum_index: int, process_index: int, micro: int, grad_accum: int,
                      num_processes: int) -> list[int]:
    """Global sample slots of one micro-batch.

    Optimizer step ``step`` consumes the ``micro * grad_accum * num_processes`` consecutive slots
    starting at ``step * that``; within it, micro-batch ``accum_index`` of process ``process_index``
    takes slots ``(accum_index * num_processes + process_index) * micro`` onwards. So the same global
    batch (e.g. 2 = batch_size 2 x 1 process = batch_size 1 x 2 processes = grad_accum 2 x 1 process)
    reads the same rows whatever the split, and the cursor after step k is just ``(k + 1) * that``.
    """
    per_step = micro * grad_accum * num_processes
    start = step * per_step + (accum_index * num_processes + process_index) * micro
    return list(range(start, start + micro))


class SampleOrder:
    """Slot -> row index: a fresh seeded permutation of the rows for every epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._perms = n, seed, {}

    def __call__(self, slot: int) -> int:
        epoch, i = divmod(slot, self.n)
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch][i]
