"""Stop on a non-finite loss, gradient or weight: a diverged run must never be saved as a result."""

from __future__ import annotations

import torch


class NonFiniteError(RuntimeError):
    """A loss, gradient or weight became inf or NaN; nothing was written."""


def global_norm(tensors) -> torch.Tensor:
    """L2 norm over all ``tensors`` together (inf or NaN if any element is): one device value, no sync.

    Sharded (FSDP) tensors contribute their local shard; the caller reduces the flag across processes.
    """
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors if t is not None]
    if not local:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(local)]))


def nonfinite(value: torch.Tensor) -> torch.Tensor:
    """1.0 where ``value`` is inf or NaN, else 0.0 (a float, so it can ride along in a reduced tensor)."""
    return (~torch.isfinite(value)).float()


def check_finite(step: int, quantities: dict[str, float]) -> None:
    """Raise ``NonFiniteError`` naming the step and the first non-finite quantity (or flag > 0)."""
    for name, value in quantities.items():
        if value > 0:
            raise NonFiniteError(f"finetune: step {step}: non-finite {name}; stopped, nothing written "
                                 "(lower train.lr or check the data and model)")
