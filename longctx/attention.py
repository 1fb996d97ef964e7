"""Attention implementations of ours, plugged into transformers through its AttentionInterface.

A model opts in with ``config._attn_implementation = "longctx_<method>"``; the settings of the
method travel in ``config.longctx_extension`` (saved in config.json, re-applied by
``longctx.modeling.load_model``). Query and key arrive already rotated by RoPE.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from longctx.rope import entropy_attention_factor

ENTROPY_ABF = "longctx_entropy_abf"
SELFEXTEND = "longctx_selfextend"


def _query_positions(query: torch.Tensor, key: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """(batch or 1, q_len) positions of the queries; without ids, the queries are the last tokens of the keys."""
    if position_ids is not None:
        return position_ids
    q_len, kv_len = query.shape[2], key.shape[2]
    return torch.arange(kv_len - q_len, kv_len, device=query.device)[None]


def softcapped_attention(module, query, key, value, attention_mask, scaling, dropout, softcap):
    """Eager attention with Gemma-2's logit soft-capping: softmax(cap * tanh(q k^T * scaling / cap) + mask) v.

    ``attention_mask`` is what ``sdpa_mask`` builds: None (causal, aligned to the end of the keys),
    boolean (True = attend) or additive float. Returns (b, q_len, h, d) like transformers' functions.
    """
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    scores = softcap * torch.tanh(scores / softcap)
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None:
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    else:
        scores = scores + attention_mask
    probs = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(query.dtype)  # fully hidden rows -> 0
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def entropy_abf_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                          position_ids=None, softcap=None, **kwargs):
    """Entropy-ABF attention (arXiv 2401.07004, Eq. 9): scaled queries, then ordinary SDPA.

    The query at position i is multiplied by max(1, log(i + 1) / log(c)), c the native window,
    in every layer except the first ``skip_layers`` (the paper leaves layers 0-1 unscaled; the
    public code never actually skips them, because every layer calls one patched function).
    Scaling the query scales the logits of that row by the same factor. A model with logit
    soft-capping (Gemma-2 passes ``softcap``) gets it after the scaling, as its own attention does.
    """
    query = entropy_abf_query(module, query, key, position_ids)
    if softcap:
        return softcapped_attention(module, query, key, value, attention_mask, scaling, dropout, softcap)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def entropy_abf_query(module, query: torch.Tensor, key: torch.Tensor, position_ids) -> torch.Tensor:
    """The query Entropy-ABF attends with: scaled by ``rope.entropy_attention_factor`` past ``skip_layers``."""
    ext = module.config.longctx_extension
    if module.layer_idx >= ext["skip_layers"]:
        pos = _query_positions(query, key, position_ids)
        factor = entropy_attention_factor(pos, ext["native_window"]).to(query.dtype)  # (b, q)
        query = query * factor[:, None, :, None]
    return query


def register_attention_functions() -> None:
    """Register our attention functions (and the SDPA mask builder for them). Idempotent."""
    from longctx.selfextend import selfextend_attention

    for name, fn in ((ENTROPY_ABF, entropy_abf_attention), (SELFEXTEND, selfextend_attention)):
        AttentionInterface.register(name, fn)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)


def attention_implementation(attention: dict | None, default: str = "sdpa") -> str:
    """The ``_attn_implementation`` name for an extension's attention settings."""
    if not attention:
        return default
    return {"entropy_abf": ENTROPY_ABF, "selfextend": SELFEXTEND}[attention["method"]]


def apply_attention(model, attention: dict | None, default: str = "sdpa") -> None:
    """Switch ``model`` to the attention its extension needs (or ``default`` when it needs none)."""
    register_attention_functions()
    config = model.config
    if attention:
        config.longctx_extension = dict(attention)
    elif hasattr(config, "longctx_extension"):
        del config.longctx_extension
    name = attention_implementation(attention, default)
    model.set_attn_implementation(name) if hasattr(model, "set_attn_implementation") else None
    # set_attn_implementation validates names; registered ones pass. Make sure every sub-config agrees.
    config._attn_implementation = name
