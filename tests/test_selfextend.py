"""SelfExtend attention (longctx.selfextend) against an independent eager reference and inside a tiny Llama."""

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaForCausalLM

from longctx import selfextend
from longctx.selfextend import (
    ATTN_IMPLEMENTATION,
    _attention_lse,
    _prefill_kernels_fit,
    _selfextend_flex,
    _selfextend_prefill,
    check_selfextend_target,
    merge_attention_partials,
    selfextend_attention,
    selfextend_usable_length,
)
from longctx.attention import register_attention_functions
from tests.conftest import tiny_llama_config

THETA = 10000.0


# --------------------------------------------------------------------------- independent reference


def rope(x, pos):
    """Rotate x (b, h, n, d) to absolute positions pos (b, n), rotate_half convention, float64."""
    d = x.shape[-1]
    inv_freq = 1.0 / (THETA ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = pos.to(torch.float64)[:, None, :, None] * inv_freq
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat((-x2, x1), -1) * sin


def reference(q0, k0, v, q_pos, k_pos, G, W, visible, scale_base=0.0, softcap=None):
    """Full score matrix, one softmax. q0/k0 UNROTATED; visible (b, q, kv) bool incl. causality."""
    q0, k0, v = q0.double(), k0.double(), v.double()
    h_q, h_kv, d = q0.shape[1], k0.shape[1], q0.shape[-1]
    k0 = k0.repeat_interleave(h_q // h_kv, dim=1)
    v = v.repeat_interleave(h_q // h_kv, dim=1)
    if scale_base > 0:
        factor = (torch.log(q_pos.clamp(min=0).double() + 1) / math.log(scale_base)).clamp(min=1)
        q0 = q0 * factor[:, None, :, None]
    qp, kp = q_pos.clamp(min=0), k_pos.clamp(min=0)
    s_neigh = rope(q0, q_pos) @ rope(k0, k_pos).transpose(-1, -2)
    s_group = rope(q0, qp // G + W - W // G) @ rope(k0, kp // G).transpose(-1, -2)
    dist = (q_pos[:, :, None] - k_pos[:, None, :])[:, None]
    scores = torch.where(dist < W, s_neigh, s_group) / math.sqrt(d)
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)  # fully hidden rows -> 0, like SDPA
    return (probs @ v).transpose(1, 2)  # (b, q, h, d)


def fake_module(G, W, h_q=4, h_kv=2, **extra):
    cfg = SimpleNamespace(
        longctx_extension={"group_size": G, "window": W, **extra}, rope_parameters={"rope_theta": THETA}
    )
    return SimpleNamespace(config=cfg, num_key_value_groups=h_q // h_kv, training=False)


def random_case(b, n, h_q=4, h_kv=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q0 = torch.randn(b, h_q, n, d, generator=g)
    k0 = torch.randn(b, h_kv, n, d, generator=g)
    v = torch.randn(b, h_kv, n, d, generator=g)
    return q0, k0, v


def run_selfextend(module, q0, k0, v, q_pos, k_pos, mask=None, **kw):
    """Feed the function what LlamaAttention gives it: q/k rotated at their true positions."""
    q = rope(q0.double(), q_pos).float()
    k = rope(k0.double(), k_pos).float()
    out, weights = selfextend_attention(module, q, k, v, mask, scaling=q0.shape[-1] ** -0.5, position_ids=q_pos, **kw)
    assert weights is None
    return out


# --------------------------------------------------------------------------- 1. exact equality with the reference


@pytest.mark.parametrize(
    "G, W, n, scale_base",
    [(2, 4, 3, 0), (3, 5, 17, 0), (4, 8, 40, 0), (1, 1, 12, 0), (4, 4, 23, 0), (2, 6, 30, 8.0)],
)
def test_matches_reference_prefill(G, W, n, scale_base):
    b = 2
    q0, k0, v = random_case(b, n, seed=n)
    pos = torch.arange(n).expand(b, n)
    module = fake_module(G, W, scale_base=scale_base)
    out = run_selfextend(module, q0, k0, v, pos, pos)  # mask None = causal
    causal = torch.ones(n, n, dtype=torch.bool).tril().expand(b, n, n)
    ref = reference(q0, k0, v, pos, pos, G, W, causal, scale_base)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_matches_reference_padding_mask_and_decode():
    """Left-padded boolean 4D mask, then a decode step (kv_len > q_len) with inferred key positions."""
    G, W, n, b = 3, 5, 26, 2
    q0, k0, v = random_case(b, n, seed=1)
    pad = torch.tensor([0, 4])  # row 1 is left-padded by 4
    idx = torch.arange(n)
    pos = (idx[None, :] - pad[:, None]).clamp(min=0)  # true positions; pads clamp to 0 (hidden)
    key_ok = idx[None, :] >= pad[:, None]
    visible = torch.ones(n, n, dtype=torch.bool).tril()[None] & key_ok[:, None, :]
    module = fake_module(G, W)
    ref = reference(q0, k0, v, pos, pos, G, W, visible)
    out = run_selfextend(module, q0, k0, v, pos, pos, mask=visible[:, None])
    torch.testing.assert_close(out.double()[:, :, :], ref, atol=1e-5, rtol=1e-5)

    # Decode: only the last 2 queries, the keys come "from the cache" (positions inferred by the function).
    q = rope(q0.double(), pos).float()[:, :, -2:]
    k = rope(k0.double(), pos).float()
    out, _ = selfextend_attention(
        module, q, k, v, visible[:, None, -2:], scaling=16**-0.5, position_ids=pos[:, -2:]
    )
    torch.testing.assert_close(out.double(), ref[:, -2:], atol=1e-5, rtol=1e-5)
    # Without a mask, several queries follow SDPA's is_causal (top-left: query i sees keys <= i), as transformers
    # means it for a prefill into an empty static cache: the first 7 queries over the whole buffer of n keys.
    q_head = rope(q0.double(), pos).float()[:1, :, :7]
    out, _ = selfextend_attention(module, q_head, k[:1], v[:1], None, scaling=16**-0.5, position_ids=pos[:1, :7])
    torch.testing.assert_close(out.double(), ref[:1, :7], atol=1e-5, rtol=1e-5)


def test_additive_float_mask_matches_boolean():
    G, W, n, b = 2, 4, 15, 2
    q0, k0, v = random_case(b, n, seed=2)
    pos = torch.arange(n).expand(b, n)
    visible = torch.ones(n, n, dtype=torch.bool).tril().expand(b, 1, n, n).clone()
    visible[1, :, :, :3] = False
    visible[1, :, :3, 0] = True  # keep every row non-empty
    additive = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
    module = fake_module(G, W)
    torch.testing.assert_close(
        run_selfextend(module, q0, k0, v, pos, pos, mask=additive),
        run_selfextend(module, q0, k0, v, pos, pos, mask=visible),
        atol=1e-6, rtol=1e-5,
    )


# --------------------------------------------------------------------------- 2. blockwise path


@pytest.mark.parametrize("block", [1, 8, 13])
def test_small_query_blocks_match_one_block(block):
    G, W, n, b = 4, 8, 50, 2
    q0, k0, v = random_case(b, n, seed=3)
    pos = torch.arange(n).expand(b, n)
    module = fake_module(G, W)
    big = run_selfextend(module, q0, k0, v, pos, pos, query_block=4096)
    small = run_selfextend(module, q0, k0, v, pos, pos, query_block=block)
    torch.testing.assert_close(small, big, atol=1e-6, rtol=1e-5)


def test_merge_attention_partials_is_exact_and_handles_empty_parts():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(3, 10, generator=g)
    v = torch.randn(10, 5, generator=g)
    full = torch.softmax(s, -1) @ v
    a, c = s[:, :4], s[:, 4:]
    part = lambda x, vv: (torch.softmax(x, -1) @ vv, torch.logsumexp(x, -1))  # noqa: E731
    o1, l1 = part(a, v[:4])
    o2, l2 = part(c, v[4:])
    torch.testing.assert_close(merge_attention_partials(o1, l1, o2, l2), full)
    empty_lse = torch.full((3,), float("-inf"))
    torch.testing.assert_close(merge_attention_partials(o1, l1, torch.zeros_like(o1), empty_lse), o1)
    both_empty = merge_attention_partials(torch.zeros_like(o1), empty_lse, torch.zeros_like(o1), empty_lse)
    assert torch.equal(both_empty, torch.zeros_like(o1))
    # Large logits must not overflow.
    o3, l3 = part(a + 1e4, v[:4])
    assert torch.isfinite(merge_attention_partials(o3, l3, o2, l2)).all()


def test_flex_path_matches_blockwise_on_cpu():
    """The CUDA flex_attention path, run with flex's eager reference on the CPU, gives the same result."""
    G, W, n, b = 3, 6, 33, 2
    q0, k0, v = random_case(b, n, seed=5)
    pos = torch.arange(n).expand(b, n)
    module = fake_module(G, W)
    expected = run_selfextend(module, q0, k0, v, pos, pos)
    q_n = rope(q0.double(), pos).float()
    k_n = rope(k0.double(), pos).float()
    q_g = rope(q0.double(), pos // G + W - W // G).float()
    k_g = rope(k0.double(), pos // G).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = _selfextend_flex(q_n, k_n, q_g, k_g, v, pos, pos, None, 16**-0.5, W, compiled=False)
    torch.testing.assert_close(out.transpose(1, 2), expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- 2a. evaluation prefill path


@pytest.mark.parametrize(
    "G, W, n, h_q, h_kv, scale_base",
    [
        (2, 8, 5, 4, 2, 0),  # T < W: plain causal attention
        (2, 8, 8, 4, 2, 0),  # T == W: still no grouped key
        (2, 8, 9, 4, 4, 0),  # one grouped key for the last query
        (3, 6, 131, 4, 2, 0),  # T >> W, GQA, more than one flex block
        (4, 16, 70, 6, 2, 8.0),  # log attention scaling, three queries per KV head
        (1, 1, 20, 2, 1, 0),  # W = 1: every earlier key is grouped
    ],
)
def test_prefill_path_matches_reference(G, W, n, h_q, h_kv, scale_base):
    """The no-grad CUDA prefill maths (flash's part replaced by its float32 twin on the CPU, flex eager) equals
    the float64 reference and the blockwise path."""
    b = 2
    q0, k0, v = random_case(b, n, h_q=h_q, h_kv=h_kv, seed=n + W)
    pos = torch.arange(n).expand(b, n)
    module = fake_module(G, W, h_q=h_q, h_kv=h_kv, scale_base=scale_base)
    q, k = rope(q0.double(), pos).float(), rope(k0.double(), pos).float()
    out = run_prefill(q, k, v, pos, G, W, scale_base).transpose(1, 2)
    causal = torch.ones(n, n, dtype=torch.bool).tril().expand(b, n, n)
    ref = reference(q0, k0, v, pos, pos, G, W, causal, scale_base)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out, run_selfextend(module, q0, k0, v, pos, pos), atol=2e-5, rtol=2e-5)


def run_prefill(q, k, v, pos, G, W, scale_base=0.0, rotary_dim=16, scaling=16**-0.5):
    inv_freq = selfextend._inv_freq(rotary_dim, THETA, q.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _selfextend_prefill(q, k, v, pos, G, W, scale_base, inv_freq, scaling, compiled=False)


def test_prefill_path_in_bf16_stays_near_reference():
    """In bf16 (the CUDA case) the grouped rotations run in bf16, as transformers' own: bf16-sized error only."""
    G, W, n, b = 4, 16, 90, 1
    q0, k0, v = random_case(b, n, seed=45)
    pos = torch.arange(n).expand(b, n)
    q, k = rope(q0.double(), pos).bfloat16(), rope(k0.double(), pos).bfloat16()
    out = run_prefill(q, k, v.bfloat16(), pos, G, W)
    assert out.dtype == torch.bfloat16
    causal = torch.ones(n, n, dtype=torch.bool).tril().expand(b, n, n)
    ref = reference(q0, k0, v, pos, pos, G, W, causal)
    torch.testing.assert_close(out.transpose(1, 2).double(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_prefill_path_equals_blockwise_with_partial_rotary(partial):
    """Partial rotary and positions offset by 7 (only the index distance decides neighbour vs grouped): the prefill
    path gives the blockwise path's output."""
    G, W, n, b = 3, 10, 45, 2
    q, k, v = random_case(b, n, seed=43)  # taken as already rotated at their true positions
    pos = (7 + torch.arange(n)).expand(b, n)
    module = fake_module(G, W)
    module.config.rope_parameters = {"rope_theta": THETA, "partial_rotary_factor": partial}
    want, _ = selfextend_attention(module, q, k, v, None, scaling=0.25, position_ids=pos)
    got = run_prefill(q, k, v, pos, G, W, rotary_dim=int(16 * partial), scaling=0.25)
    torch.testing.assert_close(got.transpose(1, 2), want, atol=1e-5, rtol=1e-5)


def test_attention_lse_fallback_matches_flash_convention():
    """The CPU twin returns what PyTorch's flash kernels return: output and natural-log lse (b, h, n)."""
    g = torch.Generator().manual_seed(44)
    q, k, v = (torch.randn(2, 4, 19, 16, generator=g) for _ in range(3))
    out, lse = _attention_lse(q, k[:, :2], v[:, :2], 0.3)  # GQA: KV heads repeated
    k2, v2 = k[:, :2].repeat_interleave(2, 1), v[:, :2].repeat_interleave(2, 1)
    flash_out, flash_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k2, v2, 0.0, True, scale=0.3)
    torch.testing.assert_close(out, flash_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, flash_lse, atol=1e-5, rtol=1e-5)


def test_prefill_kernels_route_only_unmasked_no_grad_prefills():
    b, n, d = 2, 256, 16
    q = torch.randn(b, 4, n, d, dtype=torch.bfloat16)
    k = torch.randn(b, 2, n, d, dtype=torch.bfloat16)
    pos = torch.arange(n).expand(b, n)
    with torch.no_grad():
        assert _prefill_kernels_fit(q, k, None, None, 0.0, None)
        assert _prefill_kernels_fit(q, k, None, pos + 5, 0.0, None)  # offset positions: same split
        assert not _prefill_kernels_fit(q, k, None, pos.flip(-1), 0.0, None)  # not contiguous
        assert not _prefill_kernels_fit(q, k, torch.ones(b, 1, n, n, dtype=torch.bool), pos, 0.0, None)
        assert not _prefill_kernels_fit(q, k, None, pos, 0.1, None)  # dropout
        assert not _prefill_kernels_fit(q, k, None, pos, 0.0, 50.0)  # soft-capping
        assert not _prefill_kernels_fit(q[:, :, -100:], k, None, None, 0.0, None)  # q_len != kv_len
        assert not _prefill_kernels_fit(q.float(), k.float(), None, None, 0.0, None)  # not a flash dtype
    assert _prefill_kernels_fit(q, k, None, pos, 0.0, None)  # grad mode on, nothing requires grad
    assert not _prefill_kernels_fit(q.requires_grad_(), k, None, pos, 0.0, None)  # training keeps flex


# --------------------------------------------------------------------------- 2b. gradients past the window


def _grads(fn, *leaves):
    leaves = [x.detach().clone().requires_grad_(True) for x in leaves]
    out = fn(*leaves)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
    (out * weight).sum().backward()
    return [x.grad for x in leaves]


@pytest.mark.parametrize("path", [
    "blockwise",
    pytest.param("flex", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="FlexAttention has no backward on the CPU")),
])
def test_gradients_past_the_window_are_finite_and_match_reference(path):
    """seq_len > window: early query blocks have no grouped keys (an empty softmax part). Its gradient used
    to be NaN (logsumexp of an all -inf row) and poisoned every parameter in fine-tuning."""
    G, W, n, b = 3, 8, 40, 2
    q0, k0, v = random_case(b, n, seed=11)
    pos = torch.arange(n).expand(b, n)
    causal = torch.ones(n, n, dtype=torch.bool).tril().expand(b, n, n)
    module = fake_module(G, W)

    def ours(q0, k0, v):
        if path == "blockwise":  # blocks of 16 queries: the first block has no grouped keys at all
            return run_selfextend(module, q0, k0, v, pos, pos, query_block=16)
        cuda = [x.cuda() for x in (rope(q0.double(), pos).float(), rope(k0.double(), pos).float(),
                                   rope(q0.double(), pos // G + W - W // G).float(), rope(k0.double(), pos // G).float(),
                                   v)]
        out = _selfextend_flex(*cuda, pos.cuda(), pos.cuda(), None, 16**-0.5, W)
        return out.transpose(1, 2).cpu()

    got = _grads(ours, q0, k0, v)
    want = _grads(lambda q0, k0, v: reference(q0, k0, v, pos, pos, G, W, causal).float(), q0, k0, v)
    for g, w, name in zip(got, want, ("query", "key", "value")):
        assert torch.isfinite(g).all(), f"{name} gradient not finite"
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_merge_gradient_is_finite_when_a_part_is_empty():
    """The flex path's merge: a row whose grouped pass saw no key (lse -inf) gets a zero, not NaN, gradient."""
    out1, lse1 = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    out2 = torch.zeros(2, 3, 4, requires_grad=True)
    lse2 = torch.full((2, 3), float("-inf")).requires_grad_(True)
    merged = merge_attention_partials(out1, lse1, out2, lse2)
    merged.sum().backward()
    assert torch.equal(merged, out1.detach())
    for t in (out1, lse1, out2, lse2):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(lse2.grad, torch.zeros(2, 3))


def test_finetuning_step_past_the_window_has_finite_gradients():
    """A tiny Llama with SelfExtend (window 8) trained on 40 tokens: every parameter gradient is finite and
    equals the one of the same model whose attention is the eager float64 reference above."""
    model = tiny_model(G=3, W=8).train()
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(12))
    model(ids, labels=ids).loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())

    def reference_attention(module, query, key, value, attention_mask, scaling=None, position_ids=None, **kw):
        n = query.shape[2]
        pos = torch.arange(n)[None]
        # undo the true-position rotation to get the unrotated q/k the reference expects
        q0, k0 = rope(query.double(), -pos).float(), rope(key.double(), -pos).float()
        causal = torch.ones(n, n, dtype=torch.bool).tril()[None]
        return reference(q0, k0, value, pos, pos, 3, 8, causal).to(query.dtype), None

    from transformers import AttentionInterface

    AttentionInterface.register("test_selfextend_reference", reference_attention)
    model.zero_grad()
    model.set_attn_implementation("test_selfextend_reference")
    model(ids, labels=ids).loss.backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, atol=1e-4, rtol=1e-3, msg=k)


def test_softcap_matches_reference():
    """Gemma-2's logit soft-capping is applied inside SelfExtend (both parts of the softmax)."""
    G, W, n, b = 2, 6, 25, 1
    q0, k0, v = random_case(b, n, seed=13)
    pos = torch.arange(n).expand(b, n)
    out = run_selfextend(fake_module(G, W), q0 * 8, k0 * 8, v, pos, pos, softcap=5.0)
    causal = torch.ones(n, n, dtype=torch.bool).tril().expand(b, n, n)
    ref = reference(q0 * 8, k0 * 8, v, pos, pos, G, W, causal, softcap=5.0)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(run_selfextend(fake_module(G, W), q0 * 8, k0 * 8, v, pos, pos).double(), ref, atol=1e-3)


# --------------------------------------------------------------------------- 3-5. inside a tiny Llama


def tiny_model(G=2, W=4, impl=ATTN_IMPLEMENTATION):
    register_attention_functions()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    model.config.longctx_extension = {"group_size": G, "window": W}
    model.set_attn_implementation(impl)
    return model


def test_tiny_model_prefill_takes_the_prefill_path_and_matches(monkeypatch):
    """Through transformers (no mask, contiguous position_ids, no grad): every layer takes the prefill path (run on
    the CPU's float32 twin and eager flex here) and the first layer's attention output matches the general path's.
    Its q/k weights are scaled up so attention is peaked: G 3 -> 4 or W 16 -> 17 then moves the output by ~1e-2."""
    model = tiny_model(G=3, W=16).to(torch.bfloat16)
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        attn.q_proj.weight.mul_(6)
        attn.k_proj.weight.mul_(6)
    outputs = []
    attn.register_forward_hook(lambda module, args, out: outputs.append(out[0].float()))
    ids = torch.randint(0, model.config.vocab_size, (2, 150), generator=torch.Generator().manual_seed(46))
    calls = []
    prefill = selfextend._selfextend_prefill
    with torch.no_grad():
        model(ids)
        monkeypatch.setattr(selfextend, "PREFILL_DEVICES", ("cuda", "cpu"))
        monkeypatch.setattr(selfextend, "_selfextend_prefill", lambda *a, **kw: calls.append(1) or prefill(*a, **kw))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(ids)
    assert len(calls) == model.config.num_hidden_layers
    want, got = outputs
    torch.testing.assert_close(got, want, atol=1e-3, rtol=0)


def test_set_attn_implementation_and_register_idempotent():
    register_attention_functions()
    register_attention_functions()
    model = tiny_model()
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION
    assert model.model.layers[0].self_attn.config._attn_implementation == ATTN_IMPLEMENTATION


@torch.no_grad()
def assert_decode_matches_full(decoder, full_model, ids, prompt: int, tol: float):
    """Prefill ``prompt`` tokens into ``decoder``'s KV cache, then decode one token at a time: each step's
    last-token logits equal ``full_model``'s full forward over the same prefix."""
    out = decoder(ids[:, :prompt], use_cache=True)
    cache = out.past_key_values
    for t in range(prompt, ids.shape[1]):
        out = decoder(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        full = full_model(ids[:, : t + 1]).logits[:, -1]
        torch.testing.assert_close(out.logits[:, -1].float(), full, atol=tol, rtol=tol)


@torch.no_grad()
def test_kv_cache_decoding_matches_full_forward():
    model = tiny_model(G=3, W=5)
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(6))
    k = 7
    assert_decode_matches_full(model, model, ids, k, tol=1e-5)


@torch.no_grad()
def test_right_padding_batch_matches_rows_alone():
    model = tiny_model(G=2, W=4)
    g = torch.Generator().manual_seed(7)
    lengths = [25, 16]
    ids = torch.randint(1, 128, (2, max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = 0
    batched = model(ids, attention_mask=mask).logits
    for row, n in enumerate(lengths):
        alone = model(ids[row : row + 1, :n]).logits
        torch.testing.assert_close(batched[row : row + 1, :n], alone, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_left_padded_batch_decoding_matches_rows_alone():
    """Generation-style batch: left padding, positions from the mask, then token-by-token decoding."""
    model = tiny_model(G=3, W=5)
    g = torch.Generator().manual_seed(10)
    lengths, steps = [20, 13], 6  # prompt lengths; both rows then decode `steps` tokens
    total = max(lengths) + steps
    ids = torch.randint(1, 128, (2, total), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate(lengths):
        pad = max(lengths) - n
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    prompt = total - steps
    out = model(ids[:, :prompt], attention_mask=mask[:, :prompt], position_ids=positions[:, :prompt], use_cache=True)
    cache = out.past_key_values
    for t in range(prompt, total):
        out = model(
            ids[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=positions[:, t : t + 1],
            past_key_values=cache, use_cache=True,
        )
        cache = out.past_key_values
        for row in range(2):
            real = ids[row : row + 1, : t + 1][:, mask[row, : t + 1].bool()]
            alone = model(real).logits[:, -1]
            torch.testing.assert_close(out.logits[row : row + 1, -1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("G, W", [(1, 1), (1, 6), (4, 64)])
@torch.no_grad()
def test_degenerates_to_sdpa(G, W):
    """G = 1 (grouping is the identity) or W beyond the input (no grouped key) is plain attention."""
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    se = tiny_model(G=G, W=W)
    sdpa = tiny_model(impl="sdpa")
    torch.testing.assert_close(
        se(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5
    )


@torch.no_grad()
def test_grouping_changes_long_inputs():
    """Sanity: with grouped keys in play the output differs from plain attention."""
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(9))
    assert not torch.allclose(tiny_model(G=4, W=8)(ids).logits, tiny_model(impl="sdpa")(ids).logits, atol=1e-4)


# --------------------------------------------------------------------------- 6. parameters


@pytest.mark.parametrize(
    "G, W, key", [(4, 2, "window"), (0, 4, "group_size"), (-1, 4, "group_size"), (2.0, 4, "group_size")]
)
def test_bad_params_raise(G, W, key):
    q0, k0, v = random_case(1, 5)
    pos = torch.arange(5)[None]
    with pytest.raises(ValueError, match=key):
        run_selfextend(fake_module(G, W), q0, k0, v, pos, pos)
    with pytest.raises(ValueError, match=key):
        selfextend_usable_length(4096, G, W)


def test_missing_config_raises():
    module = fake_module(2, 4)
    module.config.longctx_extension = None
    q0, k0, v = random_case(1, 5)
    pos = torch.arange(5)[None]
    with pytest.raises(ValueError, match="longctx_extension"):
        run_selfextend(module, q0, k0, v, pos, pos)


def test_usable_length_and_target_check():
    assert selfextend_usable_length(4096, 5, 1024) == 16384  # the README's example
    assert check_selfextend_target(4096, 5, 1024, 15800)
    with pytest.warns(UserWarning, match="smallest group_size that covers it: 6"):
        assert not check_selfextend_target(4096, 5, 1024, 17000)


# --------------------------------------------------------------------------- decode path (one query, KV cache)


@pytest.mark.parametrize("G, W, n, extra", [(2, 4, 3, {}), (3, 5, 26, {}), (4, 8, 40, {"scale_base": 8.0}),
                                            (2, 6, 30, {"softcap": 5.0}), (4, 64, 20, {})])
def test_decode_step_matches_reference(G, W, n, extra):
    """One query per row over the whole cache, left padding in row 1: the decode path equals the reference."""
    b = 2
    q0, k0, v = random_case(b, n, seed=n + 100)
    idx = torch.arange(n)
    pad = torch.tensor([0, 3])
    pos = (idx[None, :] - pad[:, None]).clamp(min=0)
    visible = (idx[None, :] >= pad[:, None])[:, None, :]  # (b, 1 query, kv)
    softcap = extra.get("softcap")
    module = fake_module(G, W, **{k: v_ for k, v_ in extra.items() if k != "softcap"})
    ref = reference(q0[:, :, -1:], k0, v, pos[:, -1:], pos, G, W, visible, extra.get("scale_base", 0.0), softcap)
    q = rope(q0.double(), pos).float()[:, :, -1:]
    k = rope(k0.double(), pos).float()
    out, _ = selfextend_attention(module, q, k, v, visible[:, None], scaling=16**-0.5, position_ids=pos[:, -1:],
                                  softcap=softcap)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    # bf16 inputs, as a bf16 model's cache holds them: within bf16 rounding of the float64 reference
    out, _ = selfextend_attention(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), visible[:, None],
                                  scaling=16**-0.5, position_ids=pos[:, -1:], softcap=softcap)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, atol=4e-2, rtol=4e-2)


@torch.no_grad()
def test_bf16_kv_cache_decoding_matches_float32_full_forward():
    """A bf16 model decoding 6 steps after a prefill past the window: logits within bf16 error of the float32
    model's full forward (the blockwise float32 path, checked against the reference above)."""
    model = tiny_model(G=3, W=5)
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(11))
    bf16 = tiny_model(G=3, W=5).to(torch.bfloat16)
    prompt = 24
    assert_decode_matches_full(bf16, model, ids, prompt, tol=5e-2)


@torch.no_grad()
def test_decode_step_has_no_host_sync_and_no_float32_cache_copy(monkeypatch):
    """A bf16 decoding step: no op that reads a value back to the host (``.item()``, ``int(t)``, ``nonzero``),
    and no float32 tensor as large as the cached keys before the attention (the re-rotated cache stays in bf16).
    The attention core gets bf16 keys; it takes float32 logits straight from bf16 on CUDA (``bmm`` with
    ``out_dtype``) and up-casts only where that op is missing, as on this CPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    inside, core_dtypes, core = [False], [], selfextend._decode_attention

    def recorded_core(rows, key, value, mask, scaling):
        core_dtypes.append((rows.dtype, key.dtype, value.dtype))
        inside[0] = True
        try:
            return core(rows, key, value, mask, scaling)
        finally:
            inside[0] = False

    monkeypatch.setattr(selfextend, "_decode_attention", recorded_core)

    model = tiny_model(G=3, W=5).to(torch.bfloat16)
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(12))
    out = model(ids[:, :-1], use_cache=True)
    cache = out.past_key_values
    cache_numel = 1 * model.config.num_key_value_heads * ids.shape[1] * 16  # keys of one layer after the step

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            outs = result if isinstance(result, (tuple, list)) else [result]
            seen.append((str(func), [(o.dtype, o.numel()) for o in outs if isinstance(o, torch.Tensor)], inside[0]))
            return result

    with Record():
        model(ids[:, -1:], past_key_values=cache, use_cache=True)
    names = {name for name, _, _ in seen}
    assert not any("_local_scalar_dense" in n or "nonzero" in n for n in names), sorted(names)
    big_fp32 = [(n, o) for n, outs, in_core in seen for o in outs
                if not in_core and o[0] == torch.float32 and o[1] >= cache_numel]
    assert not big_fp32, big_fp32
    assert core_dtypes and set(core_dtypes) == {(torch.bfloat16,) * 3}


def test_default_window_is_a_quarter_of_the_native_window():
    """``methods.selfextend.window: 0`` (the default): W = L / 4 -- 2048 for the embedded 8k model, the setting
    that beat 1024 at every length (docs/RESULTS.md, tenth run) -- and the group covers the target with it.
    A model with a 2k window gets 512, still below its window; an explicit window is kept."""
    from longctx.methods import build_extension

    ext = build_extension("selfextend", {}, 32768, 8192, 1e5, 64)
    assert ext.attention["window"] == ext.params["window"] == 2048
    assert ext.attention["group_size"] == 5 and (8192 - 2048) * 5 + 2048 >= 32768 > (8192 - 2048) * 4 + 2048
    assert build_extension("selfextend", {}, 8192, 2048, 1e4, 64).attention["window"] == 512
    assert build_extension("selfextend", {"window": 1024}, 32768, 8192, 1e5, 64).attention["window"] == 1024
