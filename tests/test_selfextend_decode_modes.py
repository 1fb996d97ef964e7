"""SelfExtend's decode step in each mode (``LONGCTX_SELFEXTEND_DECODE``): ``eager`` (:func:`_decode_step`) and
``sdpa`` (:func:`_decode_step_sdpa`: the two parts of the paper's one softmax, grouped keys and neighbour keys, as two
attentions with their log-sum-exp, merged). On the CPU the fused kernel is :func:`longctx.selfextend._attention_lse`'s
float32 twin, so these tests check the slicing, the extra rotations and the merge against the eager step and the
float64 reference."""

import pytest
import torch

from longctx import selfextend
from tests.test_selfextend import THETA, assert_decode_matches_full, fake_module, random_case, reference, rope, tiny_model


def _decode(module, q, k, v, mask, pos, mode, **kw):
    """One decode step through ``selfextend_attention`` with the decode step forced to ``mode``."""
    old = selfextend.DECODE_MODE
    selfextend.DECODE_MODE = mode
    try:
        return selfextend.selfextend_attention(module, q, k, v, mask, scaling=16**-0.5, position_ids=pos, **kw)[0]
    finally:
        selfextend.DECODE_MODE = old


def count_fused_steps(monkeypatch) -> list:
    """Record every call of the fused step, so a test cannot pass by falling back to the eager one."""
    calls, fused = [], selfextend._decode_step_sdpa

    def counted(*args, **kwargs):
        calls.append(args[1].shape[2])  # the cache length
        return fused(*args, **kwargs)

    monkeypatch.setattr(selfextend, "_decode_step_sdpa", counted)
    return calls


@torch.no_grad()
def test_sdpa_decode_step_equals_eager_and_reference(monkeypatch):
    """GQA (4 query heads, 2 KV heads), no padding, cache lengths on both sides of the window (W = 6)."""
    calls = count_fused_steps(monkeypatch)
    G, W, b = 3, 6, 2
    module = fake_module(G, W)
    for n in (1, 5, 6, 7, 9, 16, 31):
        q0, k0, v = random_case(b, n, seed=n)
        pos = torch.arange(n).expand(b, n)
        visible = torch.ones(b, 1, n, dtype=torch.bool)
        ref = reference(q0[:, :, -1:], k0, v, pos[:, -1:], pos, G, W, visible)
        q, k = rope(q0.double(), pos).float()[:, :, -1:], rope(k0.double(), pos).float()
        fused = _decode(module, q, k, v, None, pos[:, -1:].clone(), "sdpa")
        eager = _decode(module, q, k, v, None, pos[:, -1:].clone(), "eager")
        torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.double(), ref, atol=1e-5, rtol=1e-5)
    assert calls == [5, 6, 7, 9, 16, 31]  # a cache of one key is not a decode step (the general path takes it)


@torch.no_grad()
def test_sdpa_decode_step_partial_rotary_scale_base_bf16_and_mask_fallback():
    """Partial rotary (half the channels) with log scaling: equal to eager in float32, within bf16 rounding in
    bf16; a padding mask or soft-capping falls back to the eager step (the fused kernels take neither)."""
    G, W, n, b = 3, 5, 29, 2
    module = fake_module(G, W, scale_base=8.0)
    module.config.rope_parameters = {"rope_theta": THETA, "partial_rotary_factor": 0.5}
    q0, k0, v = random_case(b, n, seed=41)
    pos = torch.arange(n).expand(b, n)
    fused = _decode(module, q0[:, :, -1:], k0, v, None, pos[:, -1:], "sdpa")
    eager = _decode(module, q0[:, :, -1:], k0, v, None, pos[:, -1:], "eager")
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    bf = [t.bfloat16() for t in (q0[:, :, -1:], k0, v)]
    fused = _decode(module, *bf, None, pos[:, -1:], "sdpa")
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), _decode(module, *bf, None, pos[:, -1:], "eager").float(),
                               atol=2e-2, rtol=2e-2)
    mask = torch.ones(b, 1, 1, n, dtype=torch.bool)
    mask[1, ..., :3] = False  # left padding in row 1
    for kw, m in (({}, mask), ({"softcap": 5.0}, None)):
        torch.testing.assert_close(_decode(module, q0[:, :, -1:], k0, v, m, pos[:, -1:], "sdpa", **kw),
                                   _decode(module, q0[:, :, -1:], k0, v, m, pos[:, -1:], "eager", **kw))


@torch.no_grad()
def test_sdpa_kv_cache_decoding_matches_full_forward(monkeypatch):
    """A tiny Llama decoding 12 tokens from a 7-token prompt across the window (W = 5) through the fused step:
    each step's logits equal the full forward's (the blockwise path)."""
    monkeypatch.setattr(selfextend, "DECODE_MODE", "sdpa")
    calls = count_fused_steps(monkeypatch)
    model = tiny_model(G=3, W=5)
    ids = torch.randint(0, 128, (1, 19), generator=torch.Generator().manual_seed(6))
    assert_decode_matches_full(model, model, ids, 7, tol=1e-5)
    assert len(calls) == 12 * model.config.num_hidden_layers, calls  # every decode step of every layer was fused


@torch.no_grad()
def test_eager_decode_step_with_left_padding_equals_reference():
    """GQA (4 query heads, 2 KV heads), left padding in row 1, cache lengths on both sides of the window (W = 6):
    the eager step == float64 reference (``sdpa`` falls back to it under a mask)."""
    G, W, b = 3, 6, 2
    module = fake_module(G, W)
    pad = torch.tensor([0, 3])
    for n in (5, 6, 7, 9, 16, 23, 31):
        q0, k0, v = random_case(b, n, seed=n)
        idx = torch.arange(n)
        pos = (idx[None, :] - pad[:, None]).clamp(min=0)
        visible = (idx[None, :] >= pad[:, None])[:, None, :]
        ref = reference(q0[:, :, -1:], k0, v, pos[:, -1:], pos, G, W, visible)
        q, k = rope(q0.double(), pos).float()[:, :, -1:], rope(k0.double(), pos).float()
        eager = _decode(module, q, k, v, visible[:, None], pos[:, -1:].clone(), "eager")
        torch.testing.assert_close(eager.double(), ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_eager_decode_step_bf16_partial_rotary_scale_base_softcap():
    """Partial rotary (half the channels rotate), log scaling and softcap: the one-query step equals the two-query
    (general) path in float32 and stays in bf16 for a bf16 cache."""
    G, W, n, b = 3, 5, 29, 2
    module = fake_module(G, W, scale_base=8.0)
    module.config.rope_parameters = {"rope_theta": THETA, "partial_rotary_factor": 0.5}
    q0, k0, v = random_case(b, n, seed=41)
    pos = torch.arange(n).expand(b, n)
    eager = _decode(module, q0[:, :, -1:], k0, v, None, pos[:, -1:], "eager", softcap=5.0)
    two = _decode(module, q0[:, :, -2:], k0, v, None, pos[:, -2:], "eager", softcap=5.0)
    torch.testing.assert_close(eager, two[:, -1:], atol=1e-5, rtol=1e-5)
    bf = [t.bfloat16() for t in (q0[:, :, -1:], k0, v)]
    assert _decode(module, *bf, None, pos[:, -1:], "eager", softcap=5.0).dtype == torch.bfloat16


def test_bad_decode_mode_names_the_setting(monkeypatch):
    monkeypatch.setattr(selfextend, "DECODE_MODE", "fast")
    q0, k0, v = random_case(1, 5)
    with pytest.raises(ValueError, match="LONGCTX_SELFEXTEND_DECODE"):
        _decode(fake_module(2, 4), q0[:, :, -1:], k0, v, None, None, "fast")
