"""SelfExtend attention: training-free context extension by grouped positions.

Reference: Jin et al., "LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning",
ICML 2024, arXiv:2401.01325 (code: github.com/datamllab/LongLM).

The idea
--------
A RoPE model only saw relative distances ``m - n < L`` (its native window) in training. SelfExtend keeps
ordinary attention for nearby tokens and maps distant ones back into the trained range with the FLOOR
operation. For a query at position ``m`` and a key at position ``n <= m``, with group size ``G`` and
neighbour window ``W``::

    m - n <  W :  ordinary RoPE,  logit = <R(m) q, R(n) k>                 (relative distance m - n)
    m - n >= W :  grouped,        logit = <R(m // G + W - W // G) q, R(n // G) k>
                                  (relative distance m // G - n // G + W - W // G)

The shift ``W - W // G`` makes the grouped distances continue where the neighbour distances stop, so the
relative position seen by the model is monotone in ``m - n``. Both kinds of logits enter ONE softmax over all
keys. The largest grouped distance for a sequence of length ``T`` is about ``(T - W) / G + W``, so a model with
native window ``L`` can read ``(L - W) * G + W`` tokens (:func:`selfextend_usable_length`).

Choosing G and W (the paper and the LongLM README, "How to choose the group_size and neighbor_window"):
the input length must fit in ``(L - W) * G + W``; try the SMALLEST ``G`` that covers the target length first
(smaller groups are more precise), then check whether a larger ``G`` helps (it uses better-trained, smaller
positions). For Llama-2 (L = 4096) the authors found ``G`` in 2..64 and ``W`` in 512..1536 reasonable; as a
rule ``W`` should stay well below the native window (roughly 512 to ``L / 2``).

Optional log attention scaling (``scale_base`` > 0, as LongLM's ``scale_base`` option): the query at position
``m`` is multiplied by ``max(1, log(m + 1) / log(scale_base))``, for both the neighbour and grouped logits.

Use with transformers
---------------------
::

    from longctx.attention import register_attention_functions

    register_attention_functions()
    model.config.longctx_extension = {"group_size": 8, "window": 1024}   # optional "scale_base"
    model.set_attn_implementation("longctx_selfextend")   # or model.config._attn_implementation = ...

(``longctx.modeling.extend_model`` does all of this from an extension.)

Queries and keys reach the attention function already rotated at their true positions (keys possibly from a
KV cache). Rotation is linear and additive in the angle, ``R(p_new) x = R(p_new - p_old) R(p_old) x``, so the
grouped queries/keys are obtained by rotating once more by ``grouped_pos - true_pos``.

Which path computes it
----------------------
Every path computes the same maths (the tests hold each to an independent float64 reference):

- one query per row (a decoding step from a dynamic or static KV cache): :func:`_decode_step`, the grouped keys
  re-rotated relative to the query and one softmax through two batched matmuls (:func:`_decode_attention`), static
  shapes (a static cache + ``torch.compile`` captures it in a CUDA graph);
- CUDA, no gradient, no mask (an unpadded prefill: transformers passes None), ``q_len == kv_len``, contiguous
  positions, no dropout or soft-capping (the evaluation's prefill): :func:`_selfextend_prefill` -- the grouped
  part is one causal cuDNN (or FlashAttention) call on shifted slices, the neighbour part a narrow flex band
  (issue 14: the flex-only path ran at 0.6x of plain SDPA's tokens/s);
- CUDA otherwise with at least 128 queries (training with gradients, padded batches): :func:`_selfextend_flex`,
  two flex_attention passes;
- everything else (the CPU, a few queries, additive float masks, dropout): :func:`_selfextend_blockwise`.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F

from longctx import rope

ATTN_IMPLEMENTATION = "longctx_selfextend"
DEFAULT_QUERY_BLOCK = 1024
FLEX_MIN_QUERIES = 128  # one flex_attention block
PREFILL_KERNELS = ("cudnn", "flash")  # the causal kernel of the grouped part in _selfextend_prefill
PREFILL_KERNEL = "cudnn"
# torch.bmm(..., out_dtype=float32) (bf16 inputs, float32 logits without a float32 copy of the keys): CUDA, torch 2.8+
_BMM_OUT_DTYPE = torch.torch_version.TorchVersion(torch.__version__) >= (2, 8)
DECODE_KV_ALIGN = 8  # the decode matmuls' key axis is padded to this (16 bytes of bf16), see _decode_attention
PREFILL_DEVICES = ("cuda",)  # where _selfextend_prefill runs (a test adds "cpu": float32 twin, eager flex)

__all__ = [
    "ATTN_IMPLEMENTATION",
    "check_selfextend_params",
    "check_selfextend_target",
    "merge_attention_partials",
    "selfextend_attention",
    "selfextend_usable_length",
]


# ---------------------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------------------


def check_selfextend_params(group_size: int | None, window: int, scale_base: float = 0.0,
                            native_window: int | None = None, where: str = "methods.selfextend") -> None:
    """Every rule on SelfExtend's parameters, in one place; errors name ``<where>.<key>``.

    ``group_size`` None means "not chosen yet" (``methods.selfextend.group_size: 0`` picks the smallest group
    that covers the target). ``native_window`` given: the neighbour window must lie inside it.
    """
    if group_size is not None and (not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1):
        raise ValueError(f"{where}.group_size: must be an integer >= 1, got {group_size!r}")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"{where}.window: must be >= 1 (an integer), got {window!r}")
    if group_size is not None and window < group_size:
        raise ValueError(f"{where}.window: must be >= group_size ({group_size}), got {window!r}")
    if native_window is not None and window >= native_window:
        raise ValueError(f"{where}.window: must be below the native window {native_window}, got {window}")
    if scale_base < 0 or scale_base == 1:
        raise ValueError(f"{where}.scale_base: must be 0 (off) or > 1, got {scale_base!r}")


def selfextend_usable_length(native_window: int, group_size: int, window: int) -> int:
    """Longest input SelfExtend keeps within the trained positions: ``(L - W) * G + W`` (arXiv:2401.01325)."""
    check_selfextend_params(group_size, window)
    return (native_window - window) * group_size + window


def check_selfextend_target(native_window: int, group_size: int, window: int, target: int) -> bool:
    """Warn (and return False) when ``target`` tokens exceed :func:`selfextend_usable_length`.

    Rule of thumb from the paper/README: pick the smallest ``G`` with ``(L - W) * G + W >= target``.
    """
    usable = selfextend_usable_length(native_window, group_size, window)
    if target > usable:
        smallest_g = math.ceil((target - window) / (native_window - window)) if native_window > window else None
        warnings.warn(
            f"SelfExtend with native window {native_window}, group_size={group_size}, window={window} covers "
            f"{usable} tokens, less than the target {target}; positions beyond it are out of distribution"
            + (f" (smallest group_size that covers it: {smallest_g})" if smallest_g else "")
            + ".",
            stacklevel=2,
        )
        return False
    return True


def _read_params(config) -> tuple[int, int, float]:
    """(G, W, scale_base) from ``config.longctx_extension``."""
    ext = getattr(config, "longctx_extension", None)
    if not isinstance(ext, dict) or "group_size" not in ext or "window" not in ext:
        raise ValueError(
            "SelfExtend needs config.longctx_extension = {'group_size': G, 'window': W[, 'scale_base': s]}, "
            f"got {ext!r}"
        )
    scale_base = float(ext.get("scale_base", 0) or 0)
    check_selfextend_params(ext["group_size"], ext["window"], scale_base, where="longctx_extension")
    return ext["group_size"], ext["window"], scale_base


# ---------------------------------------------------------------------------------------------------------------
# Positions and rotations
# ---------------------------------------------------------------------------------------------------------------


def _positions(position_ids, batch: int, q_len: int, kv_len: int, device,
               attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Query positions (b, q_len) and key positions (b, kv_len), int64.

    In a prefill the keys are the queries. When decoding from a cache the cache does not store positions, so key
    ``j`` is taken to sit ``slot - j`` tokens before the row's last query, ``slot`` being that query's cache slot
    (:func:`_query_slot`: the last key of a dynamic cache, read from the mask in a static one). Exact for contiguous
    positions; left-padding slots and a static cache's empty slots get positions the mask hides anyway.
    """
    if position_ids is None:
        q_pos = (_causal_offset(q_len, kv_len) + torch.arange(q_len, device=device)).expand(batch, q_len)
    else:
        q_pos = position_ids.to(device=device, dtype=torch.long).expand(batch, q_len)
    if q_len == kv_len:
        k_pos = q_pos
    else:
        slot = _query_slot(attention_mask, batch, q_len, kv_len, device)
        k_pos = q_pos[:, -1:] - (slot - torch.arange(kv_len, device=device))
    return q_pos, k_pos


def _rotate(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rotate ``x`` (b, h, n, d) by the RoPE angle of ``delta`` (b, n) positions, in ``dtype``.

    Same convention as transformers' ``apply_rotary_pos_emb``: cos/sin of ``cat(freqs, freqs)`` with rotate_half,
    applied to the first ``2 * len(inv_freq)`` channels; the rest pass through (partial rotary, e.g. Phi-3).
    The angles and their cos/sin are always computed in float32; with ``dtype`` the model's bf16, the product is
    taken in bf16 like transformers' own rotation (the decode path: no float32 copy of the KV cache).
    """
    freqs = delta.to(torch.float32)[:, None, :, None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    x = x.to(dtype)
    rot, rest = x[..., : emb.shape[-1]], x[..., emb.shape[-1]:]
    half = rot.shape[-1] // 2
    rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    rotated = rot * cos + rotated_half * sin
    return rotated if rest.shape[-1] == 0 else torch.cat((rotated, rest), dim=-1)


@functools.lru_cache(maxsize=32)
def _inv_freq(rotary_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """RoPE inverse frequencies (float32) on ``device``, made once per (dim, theta, device): building them in
    every layer and step costs kernel launches and host time on every decoding step."""
    return rope.default_inv_freq(rotary_dim, theta, device).to(torch.float32)


def _log_scale(q_pos: torch.Tensor, scale_base: float) -> torch.Tensor:
    """Per-query factor max(1, log(m + 1) / log(scale_base)), shape (b, 1, q_len, 1)."""
    m = q_pos.clamp(min=0).to(torch.float32)
    return (torch.log(m + 1) / math.log(scale_base)).clamp(min=1.0)[:, None, :, None]


# ---------------------------------------------------------------------------------------------------------------
# Exact merge of two partial softmax attentions
# ---------------------------------------------------------------------------------------------------------------


def merge_attention_partials(
    out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor
) -> torch.Tensor:
    """Combine two attentions over DISJOINT key sets into the attention over their union.

    With ``out_i = softmax-weighted values`` and ``lse_i = logsumexp of logits`` of part i::

        out = (out1 * exp(lse1) + out2 * exp(lse2)) / (exp(lse1) + exp(lse2))

    computed relative to ``max(lse1, lse2)`` so nothing overflows. A part with no keys has ``lse = -inf`` and
    weight 0; a row with no keys at all gives 0 (what SDPA returns for a fully masked row).
    Shapes: ``out_i`` (..., n, d), ``lse_i`` (..., n). Result in float32 (float64 for float64 parts).
    """
    lse1, lse2 = lse1.float(), lse2.float()
    top = torch.maximum(lse1, lse2)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w1 = torch.exp(lse1 - top)
    w2 = torch.exp(lse2 - top)
    total = (w1 + w2).clamp(min=torch.finfo(torch.float32).tiny)
    # bf16 parts times float32 weights compute in float32 (type promotion) without a float32 copy of each part
    return out1 * (w1 / total)[..., None] + out2 * (w2 / total)[..., None]


# ---------------------------------------------------------------------------------------------------------------
# General (CPU) path: loop over query blocks
# ---------------------------------------------------------------------------------------------------------------


def _safe_logsumexp(scores: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim that is -inf for a row with no visible key AND has a finite gradient there.

    ``torch.logsumexp`` of an all -inf row is -inf, but its backward is exp(-inf - (-inf)) = NaN, which
    poisons every parameter once a query block has no grouped (or no neighbour) keys, i.e. whenever the
    sequence is longer than the window in training. Empty rows are computed from a zero row and then
    replaced by -inf through ``torch.where``, whose backward sends them a zero gradient.
    """
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)
    lse = torch.logsumexp(torch.where(empty, torch.zeros_like(scores), scores), dim=-1)
    return torch.where(empty[..., 0], float("-inf"), lse)


def _partial_attention(q, k, v, bias, scaling, dropout, training, softcap=None):
    """Softmax attention of q (b, hk, g, n, d) over k, v (b, hk, kv, d) with additive bias (b, 1, 1, n, kv).

    Returns (out (b, hk, g, n, d), lse (b, hk, g, n)) in float32; rows with no visible key give out 0, lse -inf.
    ``softcap`` (Gemma-2's ``attn_logit_softcapping``) caps the logits as ``softcap * tanh(s / softcap)``.
    """
    scores = torch.matmul(q, k[:, :, None].transpose(-1, -2)) * scaling
    if softcap:  # Gemma-2 logit soft-capping, before the mask: cap * tanh(s / cap)
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores + bias
    lse = _safe_logsumexp(scores)
    probs = torch.exp(scores - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
    # Dropout on the partial probabilities equals dropout on the final ones: the merge only rescales each row.
    probs = F.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs, v[:, :, None]), lse


def _key_span(selected: torch.Tensor) -> tuple[int, int] | None:
    """[first, last + 1) of the key columns (last dim) any entry of ``selected`` uses, or None."""
    cols = selected.flatten(0, -2).any(dim=0).nonzero()
    if cols.numel() == 0:
        return None
    return int(cols[0]), int(cols[-1]) + 1


def _selfextend_blockwise(
    q_n, k_n, q_g, k_g, v, q_pos, k_pos, attention_mask, scaling, window, dropout, training, query_block,
    softcap=None,
):
    """SelfExtend attention, ``query_block`` queries at a time (memory O(query_block * kv_len)).

    Per block, only the key span that holds neighbour keys (about ``W + block`` keys) gets neighbour logits and
    only the span that holds grouped keys gets grouped logits; the two partial softmaxes are merged exactly.
    q_* (b, hk, g, q_len, d), k_*/v (b, hk, kv_len, d), all float32. Returns (b, hk, g, q_len, d).
    """
    batch, _, _, q_len, _ = q_n.shape
    kv_len = k_n.shape[2]
    offset = _causal_offset(q_len, kv_len)  # without a mask, query i sees keys <= offset + i
    neg_inf = torch.tensor(float("-inf"), device=q_n.device)
    outputs = []
    for start in range(0, q_len, query_block):
        end = min(start + query_block, q_len)
        if attention_mask is None:
            kv_end = min(kv_len, offset + end)
            rows = torch.arange(start, end, device=q_n.device)[:, None] + offset
            visible = (torch.arange(kv_end, device=q_n.device)[None, :] <= rows).expand(batch, 1, -1, -1)
            bias = torch.where(visible, 0.0, neg_inf)
        else:
            kv_end = kv_len
            block_mask = attention_mask[:, :, start:end, :kv_end]
            if block_mask.dtype == torch.bool:
                visible = block_mask
                bias = torch.where(block_mask, 0.0, neg_inf)
            else:
                visible = _visible(block_mask)
                bias = block_mask.float()
        bias = bias[:, :, None]  # broadcast over the query heads sharing a KV head
        dist = q_pos[:, None, start:end, None] - k_pos[:, None, None, :kv_end]  # (b, 1, n, kv)
        neighbour = dist < window
        parts = []
        for sel, q, k in ((neighbour, q_n, k_n), (~neighbour, q_g, k_g)):
            span = _key_span(sel & visible)
            if span is None:
                continue
            lo, hi = span
            part_bias = torch.where(sel[:, :, None, :, lo:hi], bias[..., lo:hi], neg_inf)
            parts.append(
                _partial_attention(
                    q[:, :, :, start:end], k[:, :, lo:hi], v[:, :, lo:hi], part_bias, scaling, dropout, training,
                    softcap,
                )
            )
        if not parts:  # every key hidden for this block: output 0 like SDPA
            outputs.append(torch.zeros_like(q_n[:, :, :, start:end]))
        elif len(parts) == 1:
            out, lse = parts[0]
            outputs.append(torch.where(torch.isfinite(lse)[..., None], out, 0.0))
        else:
            (o1, l1), (o2, l2) = parts
            outputs.append(merge_attention_partials(o1, l1, o2, l2))
    return torch.cat(outputs, dim=3)


# ---------------------------------------------------------------------------------------------------------------
# Decode path: one query per row, keys from the KV cache (dynamic or static), one softmax over all keys
# ---------------------------------------------------------------------------------------------------------------


def _causal_offset(q_len: int, kv_len: int) -> int:
    """The cache slot of query 0 when no mask is given, in transformers' convention for SDPA-style attention.

    ``sdpa_mask`` returns None only where SDPA's own flags are exact: one query sees every key (``is_causal=False``),
    and several queries are causal from the top-left corner (``is_causal=True``: query ``i`` at slot ``i``), which
    covers ``q_len == kv_len`` and a prefill into an empty static cache (a fixed buffer longer than the prompt).
    """
    return kv_len - 1 if q_len == 1 else 0


def _query_slot(attention_mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int, device) -> torch.Tensor:
    """The cache slot of each row's last query, (b, 1) int64: the last key its mask row shows (a query sees itself).

    A dynamic cache ends at the query (slot ``kv_len - 1``); a static cache (``cache_implementation="static"``)
    is a fixed buffer whose slots after the query are empty and masked, so the slot is read from the mask
    (without one, :func:`_causal_offset`). Tensor ops only (no host sync), so a captured (CUDA-graph) decode step
    can compute it.
    """
    if attention_mask is None:
        return torch.full((batch, 1), _causal_offset(q_len, kv_len) + q_len - 1, device=device)
    slots = torch.arange(kv_len, device=device)
    visible = _visible(attention_mask[:, 0, -1, :kv_len])
    return torch.where(visible, slots, -1).amax(dim=-1, keepdim=True).expand(batch, 1)


def _visible(mask: torch.Tensor) -> torch.Tensor:
    """Which keys a boolean (True = attend) or additive float mask shows: transformers' float masks hide a key with
    the dtype's most negative value, others with -inf."""
    return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2


def _decode_step_fits(attention_mask, softcap, dropout, training) -> bool:
    """Whether :func:`_decode_step` takes this one-query call: no soft-capping or dropout (its attention core has
    neither) and a boolean mask or none (what transformers' ``sdpa_mask`` builds). Anything else -- rare in
    decoding -- takes the general path, which has all three."""
    return not softcap and not (dropout and training) and (attention_mask is None or
                                                           attention_mask.dtype == torch.bool)


def _decode_step(query, key, value, position_ids, attention_mask, inv_freq, scaling, window, group_size,
                 scale_base):
    """SelfExtend for ONE query per row (a decoding step): the cached keys re-rotated relative to the query, then ONE
    attention -- the paper's single softmax, with no split, merge, slice or host sync.

    Paper eq. (grouped part): the logit of a key at distance ``m - n >= W`` is ``<R(m_g) q, R(n_g) k>`` with
    ``m_g = m // G + W - W // G`` and ``n_g = n // G``. RoPE is orthogonal with ``R(a)^T R(b) = R(b - a)``, so
    ``<R(m_g) q, R(n_g) k> = <R(m) q, R(n_g - m_g + m) k>``: the query stays as the model rotated it (position
    ``m``) and a grouped key, cached as ``R(n) k``, is rotated once more by ``(n // G - n) - (m_g - m)``. Neighbour
    keys (``m - n < W``) stay as cached. One ``torch.where`` picks per key, and :func:`_decode_attention` computes
    the one softmax over all keys. The query heads sharing a KV head are the rows of one attention (there is one
    query position, so no causal order among rows), so the shared KV heads are never repeated.

    Every shape is fixed by the cache, not by the position: with a static cache and ``torch.compile``
    (``generate(..., cache_implementation="static")``) the step is captured in a CUDA graph like plain decoding's.
    The whole cache is re-rotated each step (elementwise, bandwidth-bound); keys past the query's slot are masked.

    query (b, h_q, 1, d) rotated at its true position ``position_ids[:, -1]``, key/value (b, h_kv, kv_len, d) from a
    dynamic or static cache, attention_mask None or boolean (b, 1, 1, kv_len) (left padding and a static cache's
    empty slots hidden). Key ``j`` sits ``slot - j`` tokens before the query (:func:`_query_slot`).
    ``inv_freq`` the RoPE inverse frequencies (not doubled). Returns (b, h_q, 1, d) in the cache dtype.
    """
    batch, h_q, _, head_dim = query.shape
    h_kv, kv_len = key.shape[1], key.shape[2]
    dtype, device = key.dtype, query.device
    q_slot = _query_slot(attention_mask, batch, 1, kv_len, device)
    q_pos = q_slot if position_ids is None else position_ids[:, -1:].to(device=device, dtype=torch.long).expand(batch, 1)
    dist = q_slot - torch.arange(kv_len, device=device)  # (b, kv_len); negative = empty static slots (masked)
    k_pos = (q_pos - dist).clamp(min=0)  # left-padding slots get clamped positions, masked anyway
    m = q_pos.clamp(min=0)
    q_delta = m // group_size + (window - window // group_size) - m  # m_g - m
    grouped = (dist >= window)[:, None, :, None]
    k_sel = torch.where(grouped, _rotate(key, (k_pos // group_size - k_pos) - q_delta, inv_freq, dtype), key)
    q = query if scale_base <= 0 else query.to(torch.float32) * _log_scale(q_pos, scale_base)
    rows = q.to(dtype).reshape(batch, h_kv, h_q // h_kv, head_dim)
    mask = None if attention_mask is None else attention_mask[:, :, -1:, :kv_len]  # broadcasts over heads and rows
    return _decode_attention(rows, k_sel, value, mask, scaling).reshape(batch, h_q, 1, head_dim)


def _decode_attention(rows, key, value, mask, scaling):
    """One softmax attention of ``rows`` (b, h_kv, g, d) -- the g query heads sharing a KV head, one position -- over
    key/value (b, h_kv, kv_len, d) with a boolean mask (b, 1, 1, kv_len) or None. Returns (b, h_kv, g, d); a row
    with no visible key gives 0, as SDPA does.

    Two batched matmuls with the softmax between them, not SDPA: with one query position there are only ``b * h_kv``
    attentions of ``g`` rows, too few for a fused kernel to spread over the GPU, while cuBLAS splits the long key
    axis over every SM. On an H200 (Mistral-7B shape, 32k cache, ``docs/RESULTS.md``, twelfth run) cuDNN's fused
    kernel took 662 us a layer against 156 us for the logits matmul here, and the captured step went from 30.3 to
    16.6 ms. Logits are float32 (``out_dtype`` on CUDA, an up-cast elsewhere) like a fused kernel's; the
    probabilities meet the values in the values' dtype, as flash kernels do. The logits are (b, h_kv, g, kv_len):
    O(n), one query.

    The key axis is zero-padded (and masked) to a multiple of :data:`DECODE_KV_ALIGN`: a dynamic cache grows one
    slot a step, and at an odd length cuBLAS picked a float gemv kernel (1.08 ms a layer on an H200; padded, the
    call's matmuls averaged 34 us; thirteenth run); a static cache's length is already aligned and pays nothing.
    """
    b, h_kv, g, d = rows.shape
    kv_len = key.shape[2]
    pad = -kv_len % DECODE_KV_ALIGN
    if pad:
        key, value = F.pad(key, (0, 0, 0, pad)), F.pad(value, (0, 0, 0, pad))
        visible = torch.ones(b, 1, 1, kv_len, dtype=torch.bool, device=key.device) if mask is None else mask
        mask = F.pad(visible, (0, pad), value=False)
        kv_len += pad
    q, k_t = rows.reshape(b * h_kv, g, d), key.reshape(b * h_kv, kv_len, d).transpose(1, 2)
    if q.is_cuda and _BMM_OUT_DTYPE:
        logits = torch.bmm(q, k_t, out_dtype=torch.float32)
    else:
        logits = torch.bmm(q.to(torch.float32), k_t.to(torch.float32))
    logits = logits.view(b, h_kv, g, kv_len) * scaling
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if mask is not None:  # softmax of an all -inf row is NaN; SDPA gives such a row 0
        probs = torch.where(mask.any(dim=-1, keepdim=True), probs, 0.0)
    return torch.matmul(probs.to(value.dtype), value)


# ---------------------------------------------------------------------------------------------------------------
# CUDA path: two flex_attention passes merged by log-sum-exp
# ---------------------------------------------------------------------------------------------------------------

_compiled_flex = None


def _flex_function(compiled: bool):
    """``flex_attention``, compiled once per process (``compiled=False``: flex's eager reference, for CPU tests)."""
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    if not compiled:
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


def _selfextend_flex(q_n, k_n, q_g, k_g, v, q_pos, k_pos, attention_mask, scaling, window, compiled=True,
                     softcap=None):
    """SelfExtend with ``flex_attention`` (fused, never materialises scores when compiled; meant for CUDA).

    q_* (b, hq, q_len, d), k_*/v (b, hk, kv_len, d) in the model dtype; ``attention_mask`` None or boolean
    (b, 1, q_len, kv_len). Pass 1 sees the neighbour keys (m - n < W) with ordinary rotations, pass 2 the grouped
    keys (m - n >= W) with grouped rotations; their outputs are merged with :func:`merge_attention_partials`.
    ``compiled=False`` runs flex's eager reference (materialises scores; only for tests on the CPU).
    ``softcap`` caps the (scaled) logits as ``softcap * tanh(s / softcap)`` through a ``score_mod``, as the
    blockwise path does. A row with no key in one pass gets lse -inf there; the merge gives it weight 0, and
    its gradient through the lse is 0 (exp(-inf) = 0), so long sequences train with finite gradients.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    attend = _flex_function(compiled)

    batch, _, q_len, _ = q_n.shape
    kv_len = k_n.shape[2]
    offset = _causal_offset(q_len, kv_len)

    if attention_mask is None:
        def visible(b, h, qi, kj):
            return kj <= qi + offset
    else:
        mask = attention_mask[:, 0]

        def visible(b, h, qi, kj):
            return mask[b, qi, kj]

    def neighbour_mod(b, h, qi, kj):
        return visible(b, h, qi, kj) & (q_pos[b, qi] - k_pos[b, kj] < window)

    def grouped_mod(b, h, qi, kj):
        return visible(b, h, qi, kj) & (q_pos[b, qi] - k_pos[b, kj] >= window)

    parts = []
    for mask_mod, q, k in ((neighbour_mod, q_n, k_n), (grouped_mod, q_g, k_g)):
        # _compile=True builds the block mask block by block instead of materialising a q_len x kv_len mask.
        block_mask = create_block_mask(mask_mod, batch, None, q_len, kv_len, device=q.device, _compile=compiled)
        out, lse = _flex_with_lse(attend, q, k, v, block_mask, scaling, softcap)
        parts.append((out, lse))
    (o1, l1), (o2, l2) = parts
    return merge_attention_partials(o1, l1, o2, l2)


def _flex_with_lse(attend, q, k, v, block_mask, scaling, softcap=None):
    score_mod = None
    if softcap:
        def score_mod(score, b, h, qi, kj):
            return softcap * torch.tanh(score / softcap)
    kw = dict(block_mask=block_mask, score_mod=score_mod, scale=scaling, enable_gqa=True)
    try:  # torch >= 2.9: return_lse is deprecated in favour of AuxRequest
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return attend(q, k, v, return_lse=True, **kw)
    out, aux = attend(q, k, v, return_aux=AuxRequest(lse=True), **kw)
    return out, aux.lse


# ---------------------------------------------------------------------------------------------------------------
# CUDA evaluation prefill: one fused causal pass (cuDNN) + one narrow flex band, merged by log-sum-exp
# ---------------------------------------------------------------------------------------------------------------


def _prefill_kernels_fit(query, key, attention_mask, position_ids, dropout, softcap) -> bool:
    """Whether a call is an unmasked no-grad prefill that :func:`_selfextend_prefill` computes exactly.

    Needs: no gradient (the fused kernel's lse is used as a constant), no mask (transformers' ``sdpa_mask`` gives
    None for an unpadded causal batch), ``q_len == kv_len``, positions contiguous in every row (the
    neighbour/grouped split is then by index distance), no dropout or soft-capping (the flash call has neither),
    and a dtype and head size the cuDNN and FlashAttention-2 kernels take. One host sync when ``position_ids``
    is given.
    """
    q_len, head_dim = query.shape[2], query.shape[3]
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad):
        return False
    if attention_mask is not None or key.shape[2] != q_len or q_len < FLEX_MIN_QUERIES or dropout or softcap:
        return False
    if query.dtype not in (torch.float16, torch.bfloat16) or head_dim % 8 or head_dim > 256:
        return False
    if position_ids is None:
        return True
    steps = torch.arange(q_len, device=position_ids.device)
    return bool((position_ids - position_ids[:, :1] == steps).all())


def _attention_lse(q, k, v, scaling, kernel: str | None = None):
    """Causal softmax attention and its log-sum-exp: (out (b, h, n, d), lse (b, h, n) float32).

    q, k, v (b, h, n, d) of one length ``n`` (top-left = bottom-right causal). KV heads fewer than query heads
    are repeated (cheap next to the attention, and the aten ops below are documented for equal heads only).
    CUDA: ``kernel`` (default :data:`PREFILL_KERNEL`) is ``cudnn`` -- the kernel plain SDPA runs on an H200
    (about 560 TFLOP/s forward in the LoRA profile) -- or ``flash`` (PyTorch's FlashAttention-2); both return the
    natural-log log-sum-exp of the scaled logits (FlashAttention-2, Dao 2023, Alg. 1 line 12). A cuDNN error
    (no cuDNN attention for this shape or build) falls back to flash with a warning. Elsewhere: the same
    quantities in float32 matrix maths, so the slicing and merging around this call are tested on the CPU.
    """
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    batch, heads, n, _ = q.shape
    if q.is_cuda:
        kernel = kernel or PREFILL_KERNEL
        if kernel not in PREFILL_KERNELS:
            raise ValueError(f"SelfExtend prefill kernel {kernel!r}; allowed: {', '.join(PREFILL_KERNELS)}")
        # cuDNN through the aten op is reported to misread non-contiguous inputs; our slices are views.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        if kernel == "cudnn":
            try:
                out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
                    q, k, v, None, True, 0.0, True, False, scale=scaling)[:2]
                return out, lse.reshape(batch, heads, -1)[..., :n].float()  # cuDNN's lse is (b, h, n, 1)
            except RuntimeError as e:
                warnings.warn(f"SelfExtend prefill: cuDNN attention failed ({str(e)[:200]}); using flash", stacklevel=2)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False, scale=scaling)[:2]
        return out, lse.reshape(batch, heads, -1)[..., :n].float()
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v.float()), torch.logsumexp(scores, dim=-1)


@functools.lru_cache(maxsize=8)
def _band_block_mask(n: int, window: int, device: torch.device, compiled: bool):
    """flex block mask of the neighbour band ``m - W < n' <= m`` (one per length: shared by every layer)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def band(b, h, qi, kj):
        return (kj <= qi) & (qi - kj < window)

    return create_block_mask(band, None, None, n, n, device=device, _compile=compiled)


def _selfextend_prefill(query, key, value, q_pos, group_size, window, scale_base, inv_freq, scaling, compiled=True,
                        kernel=None):
    """SelfExtend for an unmasked prefill with contiguous positions (see :func:`_prefill_kernels_fit`).

    With key index = position, key ``j`` is grouped for query ``i`` iff ``j <= i - W`` (paper: distance >= W).
    Writing ``i = W + i'``, that is ``j <= i'``: the grouped part is ONE ordinary causal attention of the
    shifted queries ``q_g[W:]`` over the keys ``k_g[:T - W]``, the bulk of the work, done by cuDNN's (or
    FlashAttention's) fused causal kernel, ``kernel`` (:func:`_attention_lse`).
    Queries ``i < W`` have no grouped key. The neighbour part (``i - W < j <= i``) is a band of width W, O(T W):
    flex_attention with a block mask that lists only the band's blocks, built once per length. The two parts
    are merged exactly by :func:`merge_attention_partials` (one softmax over all keys, as in the paper).

    Everything stays in the model dtype, as transformers' own rotation and the decode step: only the grouped
    slices are rotated again (``q[W:]`` and ``k[:T - W]``), the merge is float32 per element but writes back into
    the neighbour output. query (b, h_q, T, d) and key (b, h_kv, T, d) rotated at their true positions ``q_pos``
    (b, T), value (b, h_kv, T, d); the CPU tests run it in float32 with ``compiled=False`` (flex's eager
    reference). Returns (b, h_q, T, d) in the query's dtype.
    """
    n, dtype = query.shape[2], query.dtype
    q_n = query if scale_base <= 0 else (query.float() * _log_scale(q_pos, scale_base)).to(dtype)
    if n <= window:  # every key is a neighbour: plain causal attention
        return _attention_lse(q_n, key, value, scaling, kernel)[0].to(dtype)
    # Paper eq.: grouped query position m // G + W - W // G, grouped key position n // G.
    q_true, k_true = q_pos[:, window:].clamp(min=0), q_pos[:, : n - window].clamp(min=0)
    q_g = _rotate(q_n[:, :, window:], q_true // group_size + window - window // group_size - q_true, inv_freq, dtype)
    k_g = _rotate(key[:, :, : n - window], k_true // group_size - k_true, inv_freq, dtype)
    far, far_lse = _attention_lse(q_g, k_g, value[:, :, : n - window], scaling, kernel)
    band = _band_block_mask(n, window, query.device, compiled)
    out, near_lse = _flex_with_lse(_flex_function(compiled), q_n, key, value, band, scaling)
    # queries i < W keep their neighbour output (all their keys); the others get the merge, in place
    out[:, :, window:] = merge_attention_partials(out[:, :, window:], near_lse[..., window:], far, far_lse)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The attention function
# ---------------------------------------------------------------------------------------------------------------


def selfextend_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_ids: torch.Tensor | None = None,
    query_block: int = DEFAULT_QUERY_BLOCK,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SelfExtend attention as a transformers ``AttentionInterface`` function.

    Args:
        module: the attention layer; reads ``module.config.longctx_extension`` (``group_size`` G, ``window`` W,
            optional ``scale_base``), ``module.config.rope_parameters["rope_theta"]`` and
            ``module.num_key_value_groups``.
        query: (b, h_q, q_len, d), RoPE-rotated at the true positions.
        key, value: (b, h_kv, kv_len, d), keys RoPE-rotated; ``kv_len > q_len`` when decoding from a cache.
        attention_mask: None or a 4D (b, 1, q_len, kv_len) boolean (True = attend) or additive float mask, as
            transformers' ``sdpa_mask`` builds it. None means what it means to SDPA (:func:`_causal_offset`): one
            query sees every key; several are causal from the top-left (query i sees keys <= i).
        scaling: logit scale (default ``d ** -0.5``).
        dropout: attention dropout probability (applied only when ``module.training``).
        position_ids: (b, q_len) true query positions; default the slots, ``_causal_offset + arange(q_len)``.
        query_block: queries per block on the general (non-CUDA) path.
        softcap: logit soft-capping ``softcap * tanh(s / softcap)`` (Gemma-2 passes its ``attn_logit_softcapping``).

    Returns:
        (attn_output (b, q_len, h_q, d) in ``query.dtype``, None).
    """
    group_size, window, scale_base = _read_params(module.config)
    batch, h_q, q_len, head_dim = query.shape
    h_kv, kv_len = key.shape[1], key.shape[2]
    groups = h_q // h_kv
    scaling = head_dim**-0.5 if scaling is None else scaling
    device = query.device

    rope_parameters = module.config.rope_parameters
    rotary_dim = rope.rotary_dim(head_dim, rope_parameters.get("partial_rotary_factor", 1.0))
    theta = float(rope_parameters["rope_theta"])
    if q_len == 1 and kv_len > 1 and _decode_step_fits(attention_mask, softcap, dropout, module.training):
        out = _decode_step(query, key, value, position_ids, attention_mask, _inv_freq(rotary_dim, theta, device),
                           scaling, window, group_size, scale_base)  # a decoding step from the KV cache
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    q_pos, k_pos = _positions(position_ids, batch, q_len, kv_len, device, attention_mask)
    inv_freq = _inv_freq(rotary_dim, theta, device)
    if query.device.type in PREFILL_DEVICES and _prefill_kernels_fit(query, key, attention_mask, position_ids,
                                                                      dropout, softcap):
        out = _selfextend_prefill(query, key, value, q_pos, group_size, window, scale_base, inv_freq, scaling,
                                  compiled=query.is_cuda)
        return out.transpose(1, 2).contiguous(), None
    # Paper eq.: grouped query position m // G + W - W // G, grouped key position n // G (integer division).
    # Padding slots may carry negative inferred positions; clamp them so the floor stays meaningful (masked anyway).
    q_true, k_true = q_pos.clamp(min=0), k_pos.clamp(min=0)
    q_group_delta = q_true // group_size + window - window // group_size - q_true
    k_group_delta = k_true // group_size - k_true

    q_n = query.to(torch.float32)
    if scale_base > 0:
        q_n = q_n * _log_scale(q_pos, scale_base)  # commutes with the rotation, so scale the rotated query
    q_g = _rotate(q_n, q_group_delta, inv_freq)
    k_g = _rotate(key, k_group_delta, inv_freq)  # float32

    is_bool_mask = attention_mask is None or attention_mask.dtype == torch.bool
    # flex_attention for long query chunks on CUDA; a few queries (e.g. speculative or chunked decoding) are cheap
    # on the general path and would otherwise trigger a flex recompilation per cache length.
    if query.is_cuda and q_len >= FLEX_MIN_QUERIES and dropout == 0.0 and is_bool_mask:
        dtype = query.dtype
        out = _selfextend_flex(
            q_n.to(dtype), key, q_g.to(dtype), k_g.to(dtype), value, q_pos, k_pos, attention_mask, scaling, window,
            softcap=softcap,
        )  # (b, h_q, q_len, d)
    else:
        # View query heads as (h_kv, groups) so the shared KV heads broadcast instead of being repeated.
        def by_kv_head(x):
            return x.view(batch, h_kv, groups, q_len, head_dim)

        out = _selfextend_blockwise(
            by_kv_head(q_n), key.to(torch.float32), by_kv_head(q_g), k_g, value.to(torch.float32), q_pos, k_pos,
            attention_mask, scaling, window, dropout, module.training, query_block, softcap,
        ).reshape(batch, h_q, q_len, head_dim)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None
