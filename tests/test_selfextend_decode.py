"""SelfExtend's decode step (:func:`longctx.selfextend._decode_step`): the grouped keys re-rotated relative to the
query and ONE attention (:func:`longctx.selfextend._decode_attention`: two batched matmuls), with shapes fixed by the
cache. Checked against the float64 reference for dynamic and static caches (a fixed buffer whose empty slots are
masked), routed away from for what its core does not do, and traced whole by ``torch.compile`` (fullgraph) with a
static cache -- what ``generate(cache_implementation="static")`` captures in a CUDA graph on a GPU."""

import pytest
import torch

from longctx import selfextend
from tests.test_selfextend import THETA, fake_module, random_case, reference, rope, tiny_model


def count_steps(monkeypatch) -> list:
    """Record every call of the decode step (its cache length), so a test cannot pass on the general path."""
    calls, step = [], selfextend._decode_step

    def counted(*args, **kwargs):
        calls.append(args[1].shape[2])
        return step(*args, **kwargs)

    monkeypatch.setattr(selfextend, "_decode_step", counted)
    return calls


def _attend(module, q, k, v, mask, pos, **kw):
    return selfextend.selfextend_attention(module, q, k, v, mask, scaling=16**-0.5, position_ids=pos, **kw)[0]


def last_two(module, q, k, v, pos, **kw):
    """The general path's answer for the last query: the last two queries at once, causal at the end of the keys."""
    b, n = k.shape[0], k.shape[2]
    mask = torch.ones(2, n, dtype=torch.bool).tril(n - 2).expand(b, 1, 2, n)
    return _attend(module, q[:, :, -2:], k, v, mask, pos[:, -2:], **kw)[:, -1:]


@torch.no_grad()
def test_decode_step_dynamic_cache_equals_reference(monkeypatch):
    """GQA (4 query heads, 2 KV heads), no mask, cache lengths on both sides of the window (W = 6)."""
    calls = count_steps(monkeypatch)
    G, W, b = 3, 6, 2
    module = fake_module(G, W)
    for n in (2, 5, 6, 7, 9, 16, 31):
        q0, k0, v = random_case(b, n, seed=n)
        pos = torch.arange(n).expand(b, n)
        ref = reference(q0[:, :, -1:], k0, v, pos[:, -1:], pos, G, W, torch.ones(b, 1, n, dtype=torch.bool))
        q, k = rope(q0.double(), pos).float()[:, :, -1:], rope(k0.double(), pos).float()
        torch.testing.assert_close(_attend(module, q, k, v, None, pos[:, -1:].clone()).double(), ref,
                                   atol=1e-5, rtol=1e-5)
    assert calls == [2, 5, 6, 7, 9, 16, 31]


@pytest.mark.parametrize("scale_base", [0.0, 8.0])
@torch.no_grad()
def test_decode_step_static_buffer_with_left_padding_equals_reference(monkeypatch, scale_base):
    """A static cache: a buffer of 40 slots of which the first n hold keys (row 1 left-padded by 3) and the rest
    hold garbage, hidden by the mask -- the query's slot is read from the mask, not taken as the last slot."""
    calls = count_steps(monkeypatch)
    G, W, b, slots = 3, 6, 2, 40
    module = fake_module(G, W, scale_base=scale_base) if scale_base else fake_module(G, W)
    pad = torch.tensor([0, 3])
    for n in (5, 7, 16, 23, 31):
        q0, k0, v = random_case(b, n, seed=n)
        idx = torch.arange(n)
        pos = (idx[None, :] - pad[:, None]).clamp(min=0)
        visible = (idx[None, :] >= pad[:, None])[:, None, :]
        ref = reference(q0[:, :, -1:], k0, v, pos[:, -1:], pos, G, W, visible, scale_base)
        q, k = rope(q0.double(), pos).float()[:, :, -1:], rope(k0.double(), pos).float()
        garbage = torch.randn(b, k.shape[1], slots - n, k.shape[-1]) * 50
        k_buf, v_buf = torch.cat((k, garbage), dim=2), torch.cat((v, garbage), dim=2)
        mask = torch.cat((visible, torch.zeros(b, 1, slots - n, dtype=torch.bool)), dim=-1)[:, None]
        out = _attend(module, q, k_buf, v_buf, mask, pos[:, -1:].clone())
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert calls == [slots] * 5


@pytest.mark.parametrize("partial", [1.0, 0.5])
@torch.no_grad()
def test_decode_step_partial_rotary_and_bf16_equal_the_general_path(partial):
    """Partial rotary (only the first channels rotate) with log scaling: the one-query step equals the general path's
    last row (two queries at once take it) in float32, and within bf16 rounding for a bf16 cache."""
    G, W, n, b = 3, 5, 29, 2
    module = fake_module(G, W, scale_base=8.0)
    module.config.rope_parameters = {"rope_theta": THETA, "partial_rotary_factor": partial}
    q0, k0, v = random_case(b, n, seed=41)
    pos = torch.arange(n).expand(b, n)
    two = last_two(module, q0, k0, v, pos)
    torch.testing.assert_close(_attend(module, q0[:, :, -1:], k0, v, None, pos[:, -1:]), two, atol=1e-5, rtol=1e-5)
    bf = _attend(module, q0[:, :, -1:].bfloat16(), k0.bfloat16(), v.bfloat16(), None, pos[:, -1:])
    assert bf.dtype == torch.bfloat16
    torch.testing.assert_close(bf.float(), two, atol=3e-2, rtol=3e-2)


@torch.no_grad()
def test_softcap_float_mask_and_training_dropout_take_the_general_path(monkeypatch):
    """The step's attention core has no soft-capping or dropout and reads boolean masks: those calls go to the
    general path, which gives the same as its two-query form."""
    calls = count_steps(monkeypatch)
    G, W, n, b = 3, 5, 29, 2
    module = fake_module(G, W)
    q0, k0, v = random_case(b, n, seed=3)
    pos = torch.arange(n).expand(b, n)
    float_mask = torch.zeros(b, 1, 1, n)
    float_mask[1, ..., :3] = float("-inf")
    bool_mask = float_mask == 0
    for kw, mask, same in (({"softcap": 5.0}, None, None), ({}, float_mask, bool_mask[:, :, -1:])):
        one = _attend(module, q0[:, :, -1:], k0, v, mask, pos[:, -1:], **kw)
        if same is None:
            torch.testing.assert_close(one, last_two(module, q0, k0, v, pos, **kw), atol=1e-5, rtol=1e-5)
        else:  # the additive mask gives what the step gives for the same boolean mask
            torch.testing.assert_close(one, _attend(module, q0[:, :, -1:], k0, v, same, pos[:, -1:]),
                                       atol=1e-5, rtol=1e-5)
    assert selfextend._decode_step_fits(None, None, 0.1, training=False)
    assert not selfextend._decode_step_fits(None, None, 0.1, training=True)
    assert calls == [n]  # only the boolean-mask call took the step


def _greedy(model, ids, steps, cache_implementation=None):
    out = model.generate(ids, max_new_tokens=steps, do_sample=False, cache_implementation=cache_implementation,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits, dim=1)


@torch.no_grad()
def test_static_cache_generation_equals_dynamic_cache_generation(monkeypatch):
    """A tiny Llama (G = 3, W = 5) generating 10 tokens after a 9-token prompt, far past the window: with
    ``cache_implementation="static"`` (prefill into the buffer on the general path, decoding on the step) the tokens
    and logits equal those from a dynamic cache, which the full-forward tests hold to the reference."""
    model = tiny_model(G=3, W=5)
    ids = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(5))
    dyn_tokens, dyn_logits = _greedy(model, ids, 10)
    calls = count_steps(monkeypatch)
    static_tokens, static_logits = _greedy(model, ids, 10, cache_implementation="static")
    assert torch.equal(static_tokens, dyn_tokens)
    torch.testing.assert_close(static_logits, dyn_logits, atol=1e-4, rtol=1e-4)
    assert len(calls) == 9 * model.config.num_hidden_layers and len(set(calls)) == 1  # one buffer size throughout


@torch.no_grad()
def test_decode_step_compiles_as_one_graph_with_a_static_cache():
    """``torch.compile(fullgraph=True)`` traces a whole decoding forward of the tiny Llama through a static cache
    without a graph break (no host sync, no data-dependent shape), and gives the eager step's logits: the property
    a CUDA-graph capture needs. (backend "eager": Dynamo's trace only, the CPU has no CUDA graphs.)"""
    from transformers import StaticCache

    torch._dynamo.reset()
    model = tiny_model(G=3, W=5)
    ids = torch.randint(1, 128, (1, 12), generator=torch.Generator().manual_seed(8))
    logits = {}
    for name in ("eager", "compiled"):
        cache = StaticCache(config=model.config, max_cache_len=16)
        model(ids[:, :9], past_key_values=cache, use_cache=True)
        step = model if name == "eager" else torch.compile(model, backend="eager", fullgraph=True)
        outs = []
        for t in range(9, 12):
            out = step(ids[:, t : t + 1], past_key_values=cache, use_cache=True,
                       position_ids=torch.tensor([[t]]))
            outs.append(out.logits[:, -1])
        logits[name] = torch.stack(outs)
    torch.testing.assert_close(logits["compiled"], logits["eager"], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_row_with_no_visible_key_gives_zeros_not_nan(monkeypatch):
    """A batch row whose mask hides every key (a fully padded row) decodes to 0, as SDPA and the general path give,
    never NaN; the other row is unaffected."""
    calls = count_steps(monkeypatch)
    G, W, n, b = 3, 5, 20, 2
    module = fake_module(G, W)
    q0, k0, v = random_case(b, n, seed=9)
    pos = torch.arange(n).expand(b, n)
    mask = torch.ones(b, 1, 1, n, dtype=torch.bool)
    mask[1] = False
    out = _attend(module, q0[:, :, -1:], k0, v, mask, pos[:, -1:])
    assert calls == [n] and torch.isfinite(out).all()
    torch.testing.assert_close(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(out[:1], _attend(module, q0[:1, :, -1:], k0[:1], v[:1], None, pos[:1, -1:]),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [37, 40])  # padded to the alignment, already aligned
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_equals_naive_float64_softmax(dtype, n, monkeypatch):
    """The decode step's attention core (two batched matmuls, float32 logits) against a naive float64 softmax
    attention with the KV heads repeated per query head: no mask, a static cache's hidden tail, a left-padded row,
    and a row with no visible key (0, as SDPA gives). The matmuls see a key axis padded to DECODE_KV_ALIGN (an odd
    one sends cuBLAS to a slow gemv)."""
    gen = torch.Generator().manual_seed(3)
    b, h_kv, g, d = 3, 2, 4, 16
    kv_axes, bmm = [], torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda q, k_t, **kw: kv_axes.append(k_t.shape[-1]) or bmm(q, k_t, **kw))
    rows = torch.randn(b, h_kv, g, d, generator=gen).to(dtype)
    key, value = (torch.randn(b, h_kv, n, d, generator=gen).to(dtype) for _ in range(2))
    mask = torch.ones(b, 1, 1, n, dtype=torch.bool)
    mask[:, ..., -5:] = False  # empty static slots
    mask[1, ..., :7] = False  # left padding
    mask[2] = False  # nothing visible

    def naive(m):
        q, k, v = (x.double().repeat_interleave(g, dim=1) if x is not rows else x.double().reshape(b, h_kv * g, 1, d)
                   for x in (rows, key, value))
        logits = q @ k.transpose(-1, -2) * d**-0.5
        if m is not None:
            logits = logits.masked_fill(~m, float("-inf"))
        w = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        return (w @ v).reshape(b, h_kv, g, d)

    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for m in (None, mask):
        got = selfextend._decode_attention(rows, key, value, m, d**-0.5)
        assert got.dtype == dtype and torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), naive(m), **tol)
    assert selfextend._decode_attention(rows, key, value, mask, d**-0.5)[2].abs().max() == 0
    assert kv_axes and all(k % selfextend.DECODE_KV_ALIGN == 0 and k - n < selfextend.DECODE_KV_ALIGN
                           for k in kv_axes)
