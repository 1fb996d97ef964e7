"""Every frequency method against an independent reference.

- pi, dynamic_ntk, yarn, llama3: transformers' own implementation (ROPE_INIT_FUNCTIONS).
- ntk, abf, entropy_abf, the critical-base rule: the formula re-derived here from the papers.
"""

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longctx import rope
from longctx.methods import build_extension, expected_rope

NATIVE = 2048


def transformers_rope(rope_parameters: dict, head_dim: int, max_pos: int, seq_len=None):
    cfg = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                      max_position_embeddings=max_pos, rope_parameters=dict(rope_parameters))
    kind = rope_parameters["rope_type"]
    if kind == "default":
        inv = 1.0 / (rope_parameters["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
        return inv.double(), 1.0
    inv, scale = ROPE_INIT_FUNCTIONS[kind](cfg, "cpu", seq_len=seq_len)
    return inv.double(), float(scale)


@pytest.mark.parametrize("method", ["pi", "dynamic_ntk", "yarn", "llama3"])
@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0, 3.5])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("theta", [10000.0, 100000.0])
def test_native_methods_match_transformers(method, factor, head_dim, theta):
    ext = build_extension(method, {}, int(NATIVE * factor), NATIVE, theta, head_dim)
    ours, our_scale = expected_rope(ext, head_dim)
    ref, ref_scale = transformers_rope(ext.rope_parameters, head_dim, ext.max_position_embeddings)
    # transformers computes in float32: compare relative to the magnitude of each frequency.
    assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-12), (ours - ref).abs().max()
    assert our_scale == pytest.approx(ref_scale, abs=1e-6)


@pytest.mark.parametrize("seq_len", [1024, 2048, 4096, 9000])
def test_dynamic_ntk_at_runtime_lengths(seq_len):
    ours, _ = rope.dynamic_ntk_inv_freq(64, 10000.0, 4.0, NATIVE, seq_len)
    ref, _ = transformers_rope({"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}, 64, NATIVE, seq_len)
    assert torch.allclose(ours, ref, rtol=1e-6)
    if seq_len <= NATIVE:  # inside the window dynamic NTK is plain RoPE
        assert torch.allclose(ours, rope.default_inv_freq(64, 10000.0))


def test_dynamic_ntk_keeps_native_max_position_embeddings():
    # Raising max_position_embeddings to the target would make transformers' dynamic NTK a no-op.
    ext = build_extension("dynamic_ntk", {}, 4 * NATIVE, NATIVE, 10000.0, 64)
    assert ext.max_position_embeddings == NATIVE


def test_yarn_betas_and_temperature():
    inv, scale = rope.yarn_inv_freq(64, 10000.0, 16.0, NATIVE, beta_fast=16.0, beta_slow=2.0)
    ref, ref_scale = transformers_rope({"rope_type": "yarn", "factor": 16.0, "rope_theta": 10000.0,
                                        "original_max_position_embeddings": NATIVE, "beta_fast": 16.0,
                                        "beta_slow": 2.0}, 64, 16 * NATIVE)
    assert torch.allclose(inv, ref, rtol=1e-6)
    assert scale == pytest.approx(0.1 * math.log(16.0) + 1)  # YaRN Eq. 22
    assert ref_scale == pytest.approx(scale)


@pytest.mark.parametrize("factor", [2.0, 4.0, 16.0])
@pytest.mark.parametrize("head_dim", [32, 64])
def test_ntk_is_base_change(factor, head_dim):
    # NTK-aware: b' = b * s^(d/(d-2)); the lowest frequency is then exactly interpolated by s.
    inv, _ = rope.ntk_inv_freq(head_dim, 10000.0, factor)
    b2 = 10000.0 * factor ** (head_dim / (head_dim - 2))
    want = torch.tensor([b2 ** (-2 * i / head_dim) for i in range(head_dim // 2)], dtype=torch.float64)
    assert torch.allclose(inv, want, rtol=1e-12)
    assert inv[0] == pytest.approx(1.0)  # highest frequency kept
    lowest_plain = 10000.0 ** (-(head_dim - 2) / head_dim)
    assert inv[-1].item() == pytest.approx(lowest_plain / factor, rel=1e-9)
    ext = build_extension("ntk", {}, int(NATIVE * factor), NATIVE, 10000.0, head_dim)
    assert ext.rope_parameters["rope_theta"] == pytest.approx(b2)


def test_abf_explicit_base_and_rule():
    ext = build_extension("abf", {"rope_theta": 500000}, 4 * 4096, 4096, 10000.0, 128)
    assert ext.rope_parameters == {"rope_type": "default", "rope_theta": 500000.0}
    inv, _ = expected_rope(ext, 128)
    assert inv[1].item() == pytest.approx(500000.0 ** (-2 / 128))
    # Critical base (arXiv 2310.05209): b' = b^(ln(T/2pi)/ln(L/2pi)); re-derived: the longest
    # wavelength 2pi b'^((d-2)/d)... the rule equates log-ratios of the window to the period.
    b = rope.abf_base_for_target(100000.0, 8192, 32768)
    assert math.log(b) / math.log(100000.0) == pytest.approx(math.log(32768 / (2 * math.pi)) /
                                                             math.log(8192 / (2 * math.pi)))
    assert 8e5 < b < 1.1e6
    auto = build_extension("abf", {}, 32768, 8192, 100000.0, 64)
    assert auto.rope_parameters["rope_theta"] == pytest.approx(b)


def test_abf_rejects_smaller_base():
    with pytest.raises(ValueError, match="methods.abf.rope_theta"):
        build_extension("abf", {"rope_theta": 5000}, 32768, 8192, 100000.0, 64)


def test_entropy_factor_formula():
    c = 4096
    pos = torch.tensor([0, 1, 100, 4095, 4096, 8191, 16383, 65535])
    got = rope.entropy_attention_factor(pos, c)
    want = torch.tensor([max(1.0, math.log(i + 1) / math.log(c)) for i in pos.tolist()])
    assert torch.allclose(got, want, rtol=1e-6)
    assert (got[:4] == 1).all()  # inside the window logits are untouched
    assert got[-1].item() == pytest.approx(math.log(65536) / math.log(4096))  # = 4/3 at 16x


@pytest.mark.parametrize("attention_factor", [1.0, 1.05])
def test_yarn_attention_factor_knob_matches_transformers(attention_factor):
    # methods.yarn.attention_factor: written to rope_parameters, where transformers uses it as given.
    ext = build_extension("yarn", {"attention_factor": attention_factor}, 4 * NATIVE, NATIVE, 10000.0, 64)
    assert ext.rope_parameters["attention_factor"] == attention_factor
    ours, our_scale = expected_rope(ext, 64)
    ref, ref_scale = transformers_rope(ext.rope_parameters, 64, ext.max_position_embeddings)
    assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-12)
    assert our_scale == pytest.approx(attention_factor) and ref_scale == pytest.approx(attention_factor)
    # the frequencies do not depend on the temperature
    paper = build_extension("yarn", {}, 4 * NATIVE, NATIVE, 10000.0, 64)
    assert "attention_factor" not in paper.rope_parameters
    assert torch.equal(expected_rope(paper, 64)[0], ours)
    assert expected_rope(paper, 64)[1] == pytest.approx(0.1 * math.log(4.0) + 1)  # YaRN Eq. 22


@pytest.mark.parametrize("method", ["cream", "pose", "randpos"])
def test_position_id_methods_train_yarn_without_temperature_by_default(method):
    ext = build_extension(method, {}, 4 * NATIVE, NATIVE, 10000.0, 64)
    _, scale = expected_rope(ext, 64)
    assert scale == 1.0 and ext.rope_parameters["attention_factor"] == 1.0
    assert "attention_factor" not in ext.position_ids  # a frequency setting, not a position-id one
    paper = build_extension(method, {"attention_factor": 0}, 4 * NATIVE, NATIVE, 10000.0, 64)
    assert expected_rope(paper, 64)[1] == pytest.approx(0.1 * math.log(4.0) + 1)
    ref, ref_scale = transformers_rope(paper.rope_parameters, 64, paper.max_position_embeddings)
    assert ref_scale == pytest.approx(0.1 * math.log(4.0) + 1)


def test_position_ids_attention_factor_needs_yarn_frequency():
    with pytest.raises(ValueError, match="methods.cream.attention_factor: applies to frequency yarn only"):
        build_extension("cream", {"frequency": "pi", "attention_factor": 1.2}, 4 * NATIVE, NATIVE, 10000.0, 64)
    build_extension("cream", {"frequency": "pi"}, 4 * NATIVE, NATIVE, 10000.0, 64)  # the default 1 is fine


def test_position_id_extension_saved_before_the_knob_keeps_the_paper_temperature():
    # An extension.json written before methods.cream.attention_factor existed has no such key; its config's
    # rope_parameters had no attention_factor either, so transformers runs the paper's value: verify_rope must agree.
    ext = build_extension("cream", {}, 4 * NATIVE, NATIVE, 10000.0, 64)
    ext.params = {k: v for k, v in ext.params.items() if k != "attention_factor"}
    ext.rope_parameters = {k: v for k, v in ext.rope_parameters.items() if k != "attention_factor"}
    ours = expected_rope(ext, 64)[1]
    _, ref = transformers_rope(ext.rope_parameters, 64, ext.max_position_embeddings)
    assert ours == pytest.approx(0.1 * math.log(4.0) + 1) and ref == pytest.approx(ours)


def test_critical_reach_matches_the_closed_forms():
    """Reach of the pairs that never turned a full period in the window (arXiv 2310.05209): L for plain RoPE,
    s * L for PI, and L * s^(2c / (d - 2)) for NTK-aware scaling, c the first critical pair (theta_i scaled by
    s^(-2i / (d - 2)))."""
    d, base, native, s = 64, 1e5, 8192, 4.0
    plain = rope.default_inv_freq(d, base)
    c = min(i for i in range(d // 2) if 2 * math.pi * base ** (2 * i / d) > native)
    assert rope.critical_reach(plain, plain, native) == pytest.approx(native)
    assert rope.critical_reach(plain, rope.pi_inv_freq(d, base, s)[0], native) == pytest.approx(s * native)
    ntk = rope.critical_reach(plain, rope.ntk_inv_freq(d, base, s)[0], native)
    assert ntk == pytest.approx(native * s ** (2 * c / (d - 2)), rel=1e-6)
    assert c == 20 and round(ntk) == 20036 < s * native  # the embedded model: NTK x4 reaches ~20k, not 32k
    small = rope.default_inv_freq(8, 10.0)  # every wavelength < 100 tokens: no critical pair
    assert rope.critical_reach(small, small, 100) is None
