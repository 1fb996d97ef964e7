"""SelfExtend's decode step through fused attention kernels (``LONGCTX_SELFEXTEND_DECODE=sdpa``): the two parts of
the paper's one softmax (grouped keys, neighbour keys) as two attentions with their log-sum-exp, merged. On the CPU
the kernel is :func:`longctx.selfextend._attention_lse`'s float32 twin, so these tests check the slicing, the
extra rotations and the merge against the eager step and the float64 reference."""

import torch

from longctx import selfextend
from tests.test_selfextend import THETA, assert_decode_matches_full, fake_module, random_case, reference, rope, tiny_model
from tests.test_selfextend_compiled_decode import _decode


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
