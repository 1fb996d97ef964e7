"""FlashAttention-4 entry points in the shape PyTorch's FA4 glue expects.

``torch.nn.attention`` (2.11 to 2.13) registers FA4 from a module whose ``_flash_attn_fwd`` returns
``(out, lse)``. flash-attn-4 from 4.0.0b20 on returns extra tensors after those two; this module keeps
the first two, so any flash-attn-4 release works. ``longctx.kernels.sdpa_backend("fa4")`` registers
FA4 from here.
"""

from flash_attn.cute.interface import _flash_attn_bwd  # noqa: F401  (same signature in every release)
from flash_attn.cute.interface import _flash_attn_fwd as _fa4_forward


def _flash_attn_fwd(*args, **kwargs):
    result = _fa4_forward(*args, **kwargs)
    return result[0], result[1]  # (out, lse)
