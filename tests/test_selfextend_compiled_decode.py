"""The compiled SelfExtend decode step (``torch.compile(dynamic=True)``, what CUDA runs) on the CPU (Inductor's C++
backend): it equals the eager step and the float64 reference, inside a tiny Llama too, and a growing cache does not
recompile it per step. Each test compiles (tens of seconds on two CPU cores)."""

import pytest
import torch
from torch._dynamo.utils import counters

from longctx import selfextend
from tests.test_selfextend import (
    THETA,
    assert_decode_matches_full,
    fake_module,
    random_case,
    reference,
    rope,
    tiny_model,
)


def _decode(module, q, k, v, mask, pos, mode, **kw):
    """One decode step through ``selfextend_attention`` with the decode step forced to ``mode``."""
    old = selfextend.DECODE_MODE
    selfextend.DECODE_MODE = mode
    try:
        return selfextend.selfextend_attention(module, q, k, v, mask, scaling=16**-0.5, position_ids=pos, **kw)[0]
    finally:
        selfextend.DECODE_MODE = old


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


@torch.no_grad()
def test_compiled_decode_step_equals_eager_and_reference_without_recompiling():
    """GQA (4 query heads, 2 KV heads), left padding in row 1, cache lengths on both sides of the window (W = 6):
    compiled == eager == float64 reference; seven cache lengths, both sides of the window, cost one graph."""
    G, W, b = 3, 6, 2
    module = fake_module(G, W)
    pad = torch.tensor([0, 3])
    torch._dynamo.reset()
    selfextend._compiled_decode_step = None
    before = _graphs()
    for n in (5, 6, 7, 9, 16, 23, 31):
        q0, k0, v = random_case(b, n, seed=n)
        idx = torch.arange(n)
        pos = (idx[None, :] - pad[:, None]).clamp(min=0)
        visible = (idx[None, :] >= pad[:, None])[:, None, :]
        ref = reference(q0[:, :, -1:], k0, v, pos[:, -1:], pos, G, W, visible)
        q, k = rope(q0.double(), pos).float()[:, :, -1:], rope(k0.double(), pos).float()
        q_pos = pos[:, -1:].clone()  # fresh, as a model passes it (a view's storage offset is a size to dynamo)
        compiled = _decode(module, q, k, v, visible[:, None], q_pos, "compiled")
        eager = _decode(module, q, k, v, visible[:, None], q_pos, "eager")
        torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(compiled.double(), ref, atol=1e-5, rtol=1e-5)
    assert _graphs() - before == 1, dict(counters["stats"])


@torch.no_grad()
def test_compiled_decode_step_bf16_partial_rotary_scale_base():
    """bf16 cache, partial rotary (half the channels rotate), log scaling and softcap, no mask: compiled within bf16
    rounding of eager; both paths of ``selfextend_attention`` (one query vs two) agree in float32."""
    G, W, n, b = 3, 5, 29, 2
    module = fake_module(G, W, scale_base=8.0)
    module.config.rope_parameters = {"rope_theta": THETA, "partial_rotary_factor": 0.5}
    q0, k0, v = random_case(b, n, seed=41)
    pos = torch.arange(n).expand(b, n)
    compiled = _decode(module, q0[:, :, -1:], k0, v, None, pos[:, -1:], "compiled", softcap=5.0)
    eager = _decode(module, q0[:, :, -1:], k0, v, None, pos[:, -1:], "eager", softcap=5.0)
    two = _decode(module, q0[:, :, -2:], k0, v, None, pos[:, -2:], "eager", softcap=5.0)
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(compiled, two[:, -1:], atol=1e-5, rtol=1e-5)
    bf = [t.bfloat16() for t in (q0[:, :, -1:], k0, v)]
    compiled = _decode(module, *bf, None, pos[:, -1:], "compiled", softcap=5.0)
    eager = _decode(module, *bf, None, pos[:, -1:], "eager", softcap=5.0)
    assert compiled.dtype == torch.bfloat16
    torch.testing.assert_close(compiled.float(), eager.float(), atol=2e-2, rtol=2e-2)


@torch.no_grad()
def test_compiled_kv_cache_decoding_matches_full_forward(monkeypatch):
    """A tiny Llama decoding 12 tokens from a 7-token prompt across the window (W = 5) through the compiled step:
    each step's logits equal the full forward's (the blockwise path)."""
    monkeypatch.setattr(selfextend, "DECODE_MODE", "compiled")
    model = tiny_model(G=3, W=5)
    ids = torch.randint(0, 128, (1, 19), generator=torch.Generator().manual_seed(6))
    assert_decode_matches_full(model, model, ids, 7, tol=1e-5)


def test_bad_decode_mode_names_the_setting(monkeypatch):
    monkeypatch.setattr(selfextend, "DECODE_MODE", "fast")
    q0, k0, v = random_case(1, 5)
    with pytest.raises(ValueError, match="LONGCTX_SELFEXTEND_DECODE"):
        _decode(fake_module(2, 4), q0[:, :, -1:], k0, v, None, None, "fast")
