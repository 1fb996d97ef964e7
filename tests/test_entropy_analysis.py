"""Attention-entropy analysis (longctx.entropy_analysis) on the tiny Llama."""

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from longctx.attention import ENTROPY_ABF, SELFEXTEND
from longctx.entropy_analysis import (
    attention_entropy,
    default_positions,
    entropy_by_length,
    layer_groups,
    plot_entropy,
)
from longctx.methods import build_extension
from longctx.modeling import extend_model
from tests.conftest import tiny_llama_config

SEQ = 200


def _model(attn="sdpa", seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(attn_implementation=attn)).eval()


def _ids(n=SEQ, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (1, n), generator=g)


def _entropy_of_rows(p: torch.Tensor) -> torch.Tensor:
    """-sum p log p over the last dim (0 log 0 = 0)."""
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)


def _eager_entropy(model, ids, positions):
    out = model(ids, output_attentions=True, use_cache=False)
    return torch.stack([_entropy_of_rows(a[0, :, positions].double()) for a in out.attentions]).float()


def test_matches_eager_attention_weights():
    model = _model("eager")
    ids = _ids()
    positions = [0, 1, 5, 63, 64, 100, 150, SEQ - 1]
    with torch.no_grad():
        want = _eager_entropy(model, ids, positions)
    got = attention_entropy(model, ids, positions, query_chunk=3)  # several chunks
    assert got.shape == (2, 4, len(positions))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # the same weights under SDPA give the same numbers; default positions are log-spaced
    sdpa = _model("sdpa")
    torch.testing.assert_close(attention_entropy(sdpa, ids[0], positions), want, atol=1e-4, rtol=0)
    default = attention_entropy(sdpa, ids)
    assert default.shape == (2, 4, len(default_positions(SEQ)))
    assert default_positions(SEQ)[-1] == SEQ - 1


def test_uniform_attention_when_queries_are_zero():
    model = _model()
    for layer in model.model.layers:
        torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
    positions = [0, 1, 2, 10, 63, 64, 199]
    ent = attention_entropy(model, _ids(), positions)
    want = torch.tensor([math.log(i + 1) for i in positions]).expand_as(ent)
    torch.testing.assert_close(ent, want, atol=1e-5, rtol=0)


def _entropy_abf_model(skip_layers=1):
    model = _model()
    ext = build_extension("entropy_abf", {"skip_layers": skip_layers}, 256, 64, 10000.0, 16)
    extend_model(model, ext)
    assert model.config._attn_implementation == ENTROPY_ABF
    return model


def test_entropy_abf_scaling_lowers_entropy_past_the_window():
    model = _entropy_abf_model(skip_layers=1)
    ids = _ids()
    positions = list(range(40, SEQ, 7))
    scaled = attention_entropy(model, ids, positions)
    model.config._attn_implementation = "sdpa"  # same weights and RoPE, plain attention
    plain = attention_entropy(model, ids, positions)
    model.config._attn_implementation = ENTROPY_ABF
    past = torch.tensor(positions) > 64
    torch.testing.assert_close(scaled[0], plain[0], atol=1e-6, rtol=0)  # layer 0 unscaled
    assert (scaled[1][:, past] < plain[1][:, past]).all()  # scaled logits: sharper attention
    torch.testing.assert_close(scaled[1][:, ~past], plain[1][:, ~past], atol=1e-6, rtol=0)  # factor 1 inside


def test_entropy_abf_equals_eager_with_scaled_logits():
    """Exact check of the method's query scaling: softmax(f * z) from the eager weights p = softmax(z)."""
    from longctx.rope import entropy_attention_factor

    model = _entropy_abf_model(skip_layers=1)
    ids = _ids()
    positions = [10, 64, 65, 120, SEQ - 1]
    got = attention_entropy(model, ids, positions)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        attn = model(ids, output_attentions=True, use_cache=False).attentions
    model.config._attn_implementation = ENTROPY_ABF
    factor = entropy_attention_factor(torch.tensor(positions), 64).double()
    for layer, a in enumerate(attn):
        p = a[0, :, positions].double()  # (heads, n, keys)
        f = factor if layer >= 1 else torch.ones_like(factor)
        logits = torch.where(p > 0, p.log(), torch.tensor(float("-inf"), dtype=torch.float64)) * f[None, :, None]
        want = _entropy_of_rows(torch.softmax(logits, dim=-1))
        torch.testing.assert_close(got[layer].double(), want, atol=1e-4, rtol=0)


def test_selfextend_measured_as_plain_rotated_attention():
    model = _model()
    ext = build_extension("selfextend", {"group_size": 5, "window": 16}, 256, 64, 10000.0, 16)
    extend_model(model, ext)
    assert model.config._attn_implementation == SELFEXTEND
    positions = [5, 50, 150]
    got = attention_entropy(model, _ids(), positions)
    model.config._attn_implementation = "sdpa"
    plain = attention_entropy(model, _ids(), positions)
    # layer 0 sees the same q, k; later layers get SelfExtend's (different) outputs as input
    torch.testing.assert_close(got[0], plain[0], atol=1e-6, rtol=0)
    assert got.shape == plain.shape and torch.isfinite(got).all()


def test_implementation_restored_even_on_error(tiny_llama, monkeypatch):
    impl = tiny_llama.config._attn_implementation
    attention_entropy(tiny_llama, _ids(50), [10, 49])
    assert tiny_llama.config._attn_implementation == impl
    assert all(layer.self_attn.config._attn_implementation == impl for layer in tiny_llama.model.layers)
    with pytest.raises(ValueError):
        attention_entropy(tiny_llama, _ids(50), [50])
    assert tiny_llama.config._attn_implementation == impl

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:  # an error inside the probed forward pass
        m.setattr("longctx.entropy_analysis.query_entropy", boom)
        with pytest.raises(RuntimeError, match="boom"):
            attention_entropy(tiny_llama, _ids(50), [10])
    assert tiny_llama.config._attn_implementation == impl
    assert all(layer.self_attn.config._attn_implementation == impl for layer in tiny_llama.model.layers)
    # the forward pass itself is untouched by the probe: same logits before and after
    ids = _ids(50)
    with torch.no_grad():
        before = tiny_llama(ids).logits
        attention_entropy(tiny_llama, ids)
        after = tiny_llama(ids).logits
    torch.testing.assert_close(before, after)


def test_by_length_and_plot(tmp_path):
    base = _model()
    extended = _entropy_abf_model(skip_layers=1)
    ids = _ids(256)[0].tolist()
    results = {
        "base": entropy_by_length(base, ids, [128, 32, 256], last=8),
        "extended": entropy_by_length(extended, ids, [32, 128, 256], last=8),
    }
    for res in results.values():
        assert res["lengths"] == [32, 128, 256] and res["num_layers"] == 2
        assert set(res["per_layer"]) == {"32", "128", "256"} and len(res["per_layer"]["256"]) == 2
        assert res["uniform"]["256"] == pytest.approx(sum(math.log(p + 1) for p in range(248, 256)) / 8, abs=1e-5)
    with pytest.raises(ValueError):
        entropy_by_length(base, ids, [512])
    png = tmp_path / "plots" / "attention_entropy.png"
    plot_entropy(results, png)
    assert png.exists() and png.stat().st_size > 1000
    assert not list(png.parent.glob(".*tmp*"))
    assert extended.config._attn_implementation == ENTROPY_ABF
    assert base.config._attn_implementation == "sdpa"


def test_layer_groups():
    assert layer_groups(30) == [("layers 0-1", [0, 1]), ("layers 2-29", list(range(2, 30)))]
    assert layer_groups(2, 1) == [("layer 0", [0]), ("layer 1", [1])]
    assert layer_groups(2, 0) == [("layers 0-1", [0, 1])]
