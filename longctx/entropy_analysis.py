"""Attention entropy by context length: the observation behind Entropy-ABF (arXiv 2401.07004).

Entropy-ABF observes that the entropy of attention grows with the context length once a model
reads past its training window (attention spreads thin over more keys), and that the first layers
behave differently; it therefore scales the logits of the query at position i by
max(1, log(i + 1) / log(L)) in every layer except the first two. This module measures that
entropy for any model of ours, so the choice of ``methods.entropy_abf.skip_layers`` can be read
off a plot instead of copied from the paper.

How it is measured
------------------
A probe attention function is registered in transformers' ``AttentionInterface`` and the model is
switched to it for one forward pass. Per layer, the probe receives the query and key states exactly
as the model's attention function would (already rotated by RoPE), applies the query scaling of our
Entropy-ABF attention when the model runs it, takes the queries at the requested positions and
computes, ``query_chunk`` queries at a time, the softmax of ``q . k^T * scaling`` over the causal
keys (KV heads repeated for grouped-query attention) and its Shannon entropy in nats. It then calls
the real attention function, so the forward pass itself is unchanged. Memory is linear in the
sequence length: no (length x length) matrix is ever built, only (chunk x length) per head.

SelfExtend (``longctx_selfextend``) is measured from the ordinarily rotated q . k as given: the
entropy of its merged neighbour + grouped softmax (and its optional ``scale_base`` query scaling) is
out of scope, so for SelfExtend models the numbers describe the underlying plain attention.
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

PROBE = "longctx_entropy_probe"


# --------------------------------------------------------------------------- positions


def default_positions(seq_len: int, num: int = 24) -> list[int]:
    """A log-spaced set of query positions in [1, seq_len - 1], always including the last one."""
    if seq_len < 2:
        return [0] if seq_len == 1 else []
    pts = torch.logspace(0, math.log10(seq_len - 1), num, dtype=torch.float64).round().long().tolist()
    return sorted(set(pts) | {seq_len - 1})


# --------------------------------------------------------------------------- entropy of one layer


def _method_query(module, implementation: str, query: torch.Tensor, key: torch.Tensor, position_ids) -> torch.Tensor:
    """The query the model's attention function really uses: our Entropy-ABF scales it first."""
    from longctx.attention import ENTROPY_ABF, entropy_abf_query

    return entropy_abf_query(module, query, key, position_ids) if implementation == ENTROPY_ABF else query


def query_entropy(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor, scaling: float,
                  query_chunk: int = 512) -> torch.Tensor:
    """Entropy (nats) of softmax(q . k^T * scaling) over keys 0..p for the query at each position p.

    ``query`` (h_q, n, d): the queries at ``positions`` (n,), already selected; ``key`` (h_kv, L, d).
    Grouped-query attention: query head h reads KV head h // (h_q / h_kv), as transformers'
    ``repeat_kv``. Returns (h_q, n) float32.
    """
    h_q, n, d = query.shape
    h_kv = key.shape[0]
    groups = h_q // h_kv
    q = query.float().reshape(h_kv, groups, n, d)
    k = key.float()
    out = []
    for start in range(0, n, query_chunk):
        pos = positions[start:start + query_chunk]
        kv_end = int(pos.max()) + 1
        scores = torch.matmul(q[:, :, start:start + query_chunk], k[:, None, :kv_end].transpose(-1, -2)) * scaling
        visible = torch.arange(kv_end, device=k.device)[None, :] <= pos[:, None]  # (chunk, kv_end)
        scores = scores.masked_fill(~visible, float("-inf"))
        logp = torch.log_softmax(scores, dim=-1)
        p = logp.exp()
        # -sum p log p, with masked keys (p = 0, log p = -inf) contributing 0
        ent = -(p * torch.where(visible, logp, torch.zeros_like(logp))).sum(-1)
        out.append(ent.reshape(h_q, -1))
    return torch.cat(out, dim=-1)


# --------------------------------------------------------------------------- the probe


def _configs(model) -> list:
    """Every distinct config object of the model (top level and those its submodules hold)."""
    seen, configs = set(), []
    for obj in [model, *model.modules()]:
        cfg = getattr(obj, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation") and id(cfg) not in seen:
            seen.add(id(cfg))
            configs.append(cfg)
    return configs


def _real_attention(model, implementation: str):
    """The attention function ``implementation`` resolves to for this model (eager: the model's own)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attn_modules = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    eager = None
    if attn_modules:
        eager = getattr(sys.modules[type(attn_modules[0]).__module__], "eager_attention_forward", None)
    if implementation == "eager":
        if eager is None:
            raise ValueError("eager attention: the model's module defines no eager_attention_forward")
        return eager
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager)


@contextmanager
def _probing(model, record):
    """Switch ``model`` to the probe attention for the duration; restore its implementation afterwards.

    ``record(module, implementation, query, key, position_ids, scaling)`` is called per attention call,
    before the real attention function runs.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    from longctx.attention import register_attention_functions

    register_attention_functions()
    configs = _configs(model)
    original = {id(c): c._attn_implementation for c in configs}
    implementation = model.config._attn_implementation or "eager"
    if implementation == PROBE:
        raise RuntimeError("attention_entropy: the model is already being probed")
    real = _real_attention(model, implementation)

    def probe_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        scale = module.head_dim**-0.5 if scaling is None else scaling
        record(module, implementation, query, key, kwargs.get("position_ids"), scale)
        return real(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    AttentionInterface.register(PROBE, probe_attention)
    # the probe builds the same mask as the real implementation, so the real function gets what it expects
    ALL_MASK_ATTENTION_FUNCTIONS.register(PROBE, ALL_MASK_ATTENTION_FUNCTIONS[implementation])
    try:
        for c in configs:
            c._attn_implementation_internal = PROBE
        yield
    finally:
        for c in configs:
            c._attn_implementation_internal = original[id(c)]


@torch.no_grad()
def attention_entropy(model, input_ids, positions: list[int] | None = None, query_chunk: int = 512) -> torch.Tensor:
    """Shannon entropy (nats) of every head's attention for the queries at ``positions``.

    ``input_ids``: (L,) or (1, L). ``positions``: 0-based query positions (default
    :func:`default_positions`). Returns float32 (layers, heads, n_positions); entry [l, h, j] is the
    entropy of head h of layer l for the query at ``positions[j]`` over its keys 0..positions[j].
    Works for any attention implementation the model runs (eager, sdpa, our Entropy-ABF with its
    query scaling; SelfExtend as plain rotated attention, see the module docstring), and leaves the
    model's ``_attn_implementation`` as it was.
    """
    from longctx.modeling import reset_dynamic_rope

    ids = torch.as_tensor(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise ValueError(f"attention_entropy: need one sequence, (L,) or (1, L); got shape {tuple(ids.shape)}")
    seq_len = ids.shape[1]
    positions = default_positions(seq_len) if positions is None else [int(p) for p in positions]
    if not positions or min(positions) < 0 or max(positions) >= seq_len:
        raise ValueError(f"attention_entropy: positions must lie in [0, {seq_len - 1}], got {positions}")
    device = next(model.parameters()).device
    pos = torch.tensor(positions, device=device)
    per_layer: dict[int, torch.Tensor] = {}

    def record(module, implementation, query, key, position_ids, scaling):
        if query.shape[2] != key.shape[2]:
            raise RuntimeError("attention_entropy: expects one prefill without a KV cache")
        query = _method_query(module, implementation, query, key, position_ids)
        per_layer[module.layer_idx] = query_entropy(query[0, :, pos], key[0], pos, scaling, query_chunk).cpu()

    reset_dynamic_rope(model)
    was_training = model.training
    model.eval()
    try:
        with _probing(model, record):
            # the decoder alone: the LM head would build a (L x vocab) logits matrix for nothing
            model.get_decoder()(input_ids=ids.to(device), use_cache=False)
    finally:
        model.train(was_training)
    if not per_layer:
        raise RuntimeError("attention_entropy: no attention call was seen; does the model use AttentionInterface?")
    return torch.stack([per_layer[i] for i in sorted(per_layer)])


# --------------------------------------------------------------------------- by length


def _token_ids(tokenizer_or_ids) -> list[int]:
    if isinstance(tokenizer_or_ids, torch.Tensor):
        return tokenizer_or_ids.flatten().tolist()
    if isinstance(tokenizer_or_ids, (list, tuple)):
        return list(tokenizer_or_ids)
    from longctx.evaluation.perplexity import long_text

    tok = tokenizer_or_ids
    ids = tok(long_text(), add_special_tokens=False).input_ids
    bos = [tok.bos_token_id] if getattr(tok, "bos_token_id", None) is not None else []
    return bos + ids


def entropy_by_length(model, tokenizer_or_ids, lengths, last: int = 32, query_chunk: int = 512) -> dict:
    """Mean attention entropy per layer at each context length.

    ``tokenizer_or_ids``: token ids (list or tensor), or a tokenizer, which then tokenises
    ``longctx.evaluation.perplexity.long_text()`` (a BOS token first when it has one). For each
    length the first ``length`` tokens are run and the entropy of the last ``last`` queries is
    averaged over them and over heads. Returns::

        {"lengths": [...], "last_positions": last, "num_layers": n,
         "per_layer": {"<length>": [entropy of layer 0, 1, ...]},
         "mean": {"<length>": mean over layers},
         "uniform": {"<length>": mean log(i + 1) over the same queries (entropy of uniform attention)}}
    """
    ids = _token_ids(tokenizer_or_ids)
    lengths = sorted({int(n) for n in lengths})
    if lengths and lengths[-1] > len(ids):
        raise ValueError(f"entropy_by_length: length {lengths[-1]} exceeds the {len(ids)} tokens available")
    out = {"lengths": lengths, "last_positions": last, "per_layer": {}, "mean": {}, "uniform": {}}
    for n in lengths:
        positions = list(range(max(0, n - last), n))
        ent = attention_entropy(model, ids[:n], positions, query_chunk)  # (layers, heads, positions)
        per_layer = ent.mean(dim=(1, 2)).tolist()
        out["num_layers"] = len(per_layer)
        out["per_layer"][str(n)] = [round(v, 6) for v in per_layer]
        out["mean"][str(n)] = round(sum(per_layer) / len(per_layer), 6)
        out["uniform"][str(n)] = round(sum(math.log(p + 1) for p in positions) / len(positions), 6)
    return out


# --------------------------------------------------------------------------- plot


def layer_groups(num_layers: int, first: int = 2) -> list[tuple[str, list[int]]]:
    """[("layers 0-1", [0, 1]), ("layers 2-29", [2, ..., 29])] (the split Entropy-ABF uses)."""
    first = max(0, min(first, num_layers))
    groups = []
    if first:
        groups.append(("layer 0" if first == 1 else f"layers 0-{first - 1}", list(range(first))))
    if first < num_layers:
        rest = list(range(first, num_layers))
        groups.append((f"layer {first}" if len(rest) == 1 else f"layers {first}-{num_layers - 1}", rest))
    return groups


def plot_entropy(results_by_model: dict[str, dict], path_png, first_layers: int = 2) -> None:
    """One figure: mean entropy vs context length per layer group and model; per-layer entropy at the longest length.

    ``results_by_model``: {"base": entropy_by_length(...), "extended": ...}. Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_len, ax_layer) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for m, (model_name, res) in enumerate(results_by_model.items()):
        color = colors[m % len(colors)]
        lengths = res["lengths"]
        if not lengths:
            continue
        for g, (label, layers) in enumerate(layer_groups(res["num_layers"], first_layers)):
            ys = [sum(res["per_layer"][str(n)][i] for i in layers) / len(layers) for n in lengths]
            ax_len.plot(lengths, ys, ("o-", "s--", "^:")[g % 3], color=color, label=f"{model_name}, {label}")
        longest = str(lengths[-1])
        ax_layer.plot(range(res["num_layers"]), res["per_layer"][longest], "o-", color=color, markersize=3,
                      label=f"{model_name} ({longest} tokens)")
    ax_len.set_xscale("log", base=2)
    all_lengths = sorted({n for r in results_by_model.values() for n in r["lengths"]})
    if all_lengths:
        ax_len.set_xticks(all_lengths, [str(n) for n in all_lengths])
        ax_len.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax_len.set_xlabel("context length (tokens)")
    ax_len.set_ylabel("mean attention entropy (nats)")
    ax_len.set_title("entropy of the last queries vs length")
    ax_layer.set_xlabel("layer")
    ax_layer.set_ylabel("mean attention entropy (nats)")
    ax_layer.set_title("per layer, longest length")
    if first_layers > 0:
        ax_layer.axvline(first_layers - 0.5, color="grey", lw=0.8, ls=":")
    for ax in (ax_len, ax_layer):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    from longctx.io import atomic_savefig

    atomic_savefig(fig, path_png)
