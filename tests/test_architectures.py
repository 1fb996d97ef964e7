"""Your own model: every architecture x every method is either in force after save -> load or refused by name.

Tiny random models (2 layers, hidden 64, native window 64) of Llama, Llama-3.1 (llama3 scaling), Mistral
(sliding window in every layer), Qwen2 (use_sliding_window), Gemma-2 (soft-capping, eager, alternating
sliding layers), Gemma-3 (per-layer-type RoPE), Phi-3 (partial rotary) and GPT-2 (no RoPE). A cell that
works is checked against references written here, independent of longctx:
- frequencies: the formula of the method from the base model's own RoPE (pi/ntk/abf written out, the others
  through transformers' ROPE_INIT_FUNCTIONS on a rope dict spelled out here);
- logits at 3x the native window: the untouched base model with the reference frequencies put into its
  rotary embedding (and for Entropy-ABF / SelfExtend a reference attention written here).
A cell that refuses must say why; nothing is written then.
"""

import json
import math
import warnings

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models
from transformers import AttentionInterface, AutoModelForCausalLM, PreTrainedTokenizerFast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longctx.base_model import materialize_base_model
from longctx.methods import METHODS
from longctx.modeling import load_model, make_extended_model, reset_dynamic_rope, rotary_embedding

NATIVE, TARGET, N_TOKENS = 64, 256, 192
COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=NATIVE, pad_token_id=0, bos_token_id=1,
              eos_token_id=1)
LLAMA3_BASE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

ARCHITECTURES = {
    "llama": lambda: T.LlamaConfig(**COMMON),
    "llama3.1": lambda: T.LlamaConfig(**COMMON, rope_parameters=dict(LLAMA3_BASE)),
    "mistral": lambda: T.MistralConfig(**COMMON, sliding_window=32),
    "qwen2": lambda: T.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=32, max_window_layers=1),
    # a soft cap this small bends every logit: the reference below proves it is applied
    "gemma2": lambda: T.Gemma2Config(**COMMON, head_dim=16, sliding_window=32, attn_logit_softcapping=0.5),
    "gemma3": lambda: T.Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=32,
                                         layer_types=["sliding_attention", "full_attention"]),
    "phi3": lambda: T.Phi3Config(**COMMON, partial_rotary_factor=0.5),
    "gpt2": lambda: T.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=NATIVE,
                                 bos_token_id=1, eos_token_id=1),
}
ATTN = {"gemma2": "eager"}  # model.attn_implementation: Gemma-2's soft-capping needs eager

# Explicit parameters where a default would be computed by longctx itself (the reference must not reuse it).
PARAMS = {"abf": {"rope_theta": 80000.0}, "entropy_abf": {"rope_theta": 80000.0, "skip_layers": 1},
          "selfextend": {"group_size": 5, "window": 16}}

SCALED = "cannot start from the base model's own RoPE scaling"
SLIDING = "sliding-window attention"


def outcome(arch: str, method: str):
    """("ok" | "warn" | "refuse", message regex)."""
    if method == "none":
        return ("warn", "learned positions for 64 tokens and no RoPE") if arch == "gpt2" else ("ok", None)
    if arch == "gpt2":
        return "refuse", "needs a RoPE model"
    if arch == "gemma3":
        return "refuse", "per-layer-type RoPE"
    if arch == "llama3.1":
        return ("ok", None) if method == "llama3" else ("refuse", SCALED + ".*method: llama3 to scale")
    if arch == "phi3" and method in ("pi", "dynamic_ntk", "yarn", "llama3", "cream", "pose", "randpos"):
        return "refuse", "not supported for Phi3Config: its config refuses rope_type"
    if arch in ("mistral", "qwen2", "gemma2"):
        if method == "selfextend":
            return "refuse", "selfextend is not supported here.*sliding_window=32"
        return "warn", r"sliding-window attention \(config sliding_window=32\)"
    return "ok", None


# --------------------------------------------------------------------------- base models


def word_tokenizer():
    """A 128-word tokenizer matching the tiny models' vocabulary (saved beside each base model)."""
    vocab = {f"t{i}": i for i in range(128)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                   eos_token="t1", bos_token="t1", pad_token="t0")


def save_base(model, tok, root, name):
    """Save ``model`` + ``tok`` as a hub-style folder, then make ``root/name`` from it as the base_model stage does."""
    model.save_pretrained(root / f"{name}-src")
    tok.save_pretrained(root / f"{name}-src")
    materialize_base_model(str(root / f"{name}-src"), root / name)
    return root / name


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Each tiny architecture saved and materialised through the base_model stage's code path."""
    root = tmp_path_factory.mktemp("arch")
    tok = word_tokenizer()
    out = {}
    for name, make in ARCHITECTURES.items():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_config(make(), attn_implementation=ATTN.get(name, "sdpa"))
        if name == "gemma2":  # sharper attention than random init gives, so the soft cap bends real logits
            with torch.no_grad():
                for layer in model.model.layers:
                    layer.self_attn.q_proj.weight.mul_(20)
                    layer.self_attn.k_proj.weight.mul_(20)
        out[name] = save_base(model, tok, root, name)
    return out


def plain_model(path, arch):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation=ATTN.get(arch, "sdpa")).eval()


# --------------------------------------------------------------------------- independent references


def head_dim(cfg):
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def plain_inv_freq(dim, theta):
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def transformers_inv_freq(cfg, rope_parameters, max_pos, seq_len=None):
    """transformers' own formula for a rope dict written out by the test."""
    c = T.LlamaConfig(hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
                      head_dim=head_dim(cfg), max_position_embeddings=max_pos, rope_parameters=dict(rope_parameters))
    inv, scale = ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](c, "cpu", seq_len=seq_len)
    return inv.double(), float(scale)


def reference_rope(arch, method, cfg, seq_len=None):
    """(inv_freq, attention scaling) the extended model must run, from the base config and the method alone."""
    base = dict(cfg.rope_parameters)
    prf = base.get("partial_rotary_factor", 1.0)
    dim = int(head_dim(cfg) * prf)
    theta, s = base["rope_theta"], TARGET / NATIVE
    freq = METHODS[method].defaults.get("frequency", method)  # cream/pose/randpos: their default frequency
    if method == "none":
        if base["rope_type"] == "default":
            return plain_inv_freq(dim, theta), 1.0
        return transformers_inv_freq(cfg, base, cfg.max_position_embeddings)
    if freq == "llama3" and arch == "llama3.1":  # composed: the model's own factor times target / native
        return transformers_inv_freq(cfg, {**base, "factor": base["factor"] * s}, TARGET)
    if freq in ("selfextend",):
        return plain_inv_freq(dim, theta), 1.0
    if freq == "pi":
        return plain_inv_freq(dim, theta) / s, 1.0
    if freq == "ntk":
        return plain_inv_freq(dim, theta * s ** (dim / (dim - 2))), 1.0
    if freq in ("abf", "entropy_abf"):
        return plain_inv_freq(dim, PARAMS[method]["rope_theta"]), 1.0
    spelled = {
        "yarn": {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": NATIVE},
        "llama3": {"rope_type": "llama3", "factor": s, "original_max_position_embeddings": NATIVE,
                   "low_freq_factor": 1.0, "high_freq_factor": 4.0},
        "dynamic_ntk": {"rope_type": "dynamic", "factor": s},
    }[freq]
    if freq == "yarn" and METHODS[method].defaults.get("attention_factor"):  # cream/pose/randpos: no temperature
        spelled["attention_factor"] = METHODS[method].defaults["attention_factor"]
    max_pos = NATIVE if freq == "dynamic_ntk" else TARGET
    return transformers_inv_freq(cfg, {"rope_theta": theta, "partial_rotary_factor": prf, **spelled}, max_pos,
                                 seq_len)


def rotate(x, pos, inv_freq):
    """RoPE on the first 2 * len(inv_freq) channels (rotate_half convention), float64."""
    rot = 2 * inv_freq.shape[0]
    ang = pos.double()[:, None, :, None] * inv_freq
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
    r, rest = x[..., :rot].double(), x[..., rot:].double()
    r1, r2 = r[..., : rot // 2], r[..., rot // 2:]
    return torch.cat((r * cos + torch.cat((-r2, r1), -1) * sin, rest), -1)


def make_reference_attention(method, params, inv_freq):
    """Eager attention for Entropy-ABF (Eq. 9 query scaling) and SelfExtend (floor-grouped positions), float64."""

    def attention(module, query, key, value, attention_mask, scaling=None, softcap=None, **kw):
        b, h, n, d = query.shape
        pos = torch.arange(n)[None]
        q, k = query.double(), key.repeat_interleave(h // key.shape[1], 1).double()
        v = value.repeat_interleave(h // value.shape[1], 1).double()
        if method == "entropy_abf":
            if module.layer_idx >= params["skip_layers"]:
                q = q * torch.clamp(torch.log(pos.double() + 1) / math.log(NATIVE), min=1)[:, None, :, None]
            scores = q @ k.transpose(-1, -2)
        else:  # selfextend: undo the true rotation, re-rotate grouped positions, one softmax over both kinds
            G, W = params["group_size"], params["window"]
            q0, k0 = rotate(q, -pos, inv_freq), rotate(k, -pos, inv_freq)
            near = rotate(q0, pos, inv_freq) @ rotate(k0, pos, inv_freq).transpose(-1, -2)
            far = rotate(q0, pos // G + W - W // G, inv_freq) @ rotate(k0, pos // G, inv_freq).transpose(-1, -2)
            scores = torch.where((pos[0, :, None] - pos[0, None, :]) < W, near, far)
        scores = scores * (scaling if scaling is not None else d ** -0.5)
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            causal = causal & attention_mask[:, :, :, :n]
        scores = scores.masked_fill(~causal, float("-inf"))
        return (scores.softmax(-1) @ v).to(query.dtype).transpose(1, 2).contiguous(), None

    return attention


def reference_logits(arch, method, base_dir, ids):
    """The untouched base model with the reference frequencies (and attention) of the method put in."""
    model = plain_model(base_dir, arch)
    rotary = rotary_embedding(model)
    if method != "none":
        inv, scale = reference_rope(arch, method, model.config, seq_len=ids.shape[1])
        rotary.inv_freq = inv.float()
        rotary.attention_scaling = scale
        rotary.rope_type = "default"  # the reference is static: no dynamic update of its own
    if method in ("entropy_abf", "selfextend"):
        name = f"test_reference_{method}"
        AttentionInterface.register(name, make_reference_attention(method, PARAMS[method], inv))
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
        model.set_attn_implementation(name)
    with torch.no_grad():
        return model(ids).logits


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_method_in_force_or_refused(arch, method, bases, tmp_path):
    out = tmp_path / "ext"
    kind, message = outcome(arch, method)
    args = (bases[arch], out, method, PARAMS.get(method, {}), TARGET)
    if kind == "refuse":
        with pytest.raises(ValueError, match=message):
            make_extended_model(*args)
        assert not out.exists()
        return
    if kind == "warn":
        with pytest.warns(UserWarning, match=message):
            make_extended_model(*args)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a cell that works says nothing
            make_extended_model(*args)

    # save -> load -> save -> load, as extend and finetune do; a load that has to repair the config would warn
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = load_model(out, dtype="float32", device="cpu", attn_implementation=ATTN.get(arch, "sdpa"))
        again = tmp_path / "again"
        model.save_pretrained(again)
        (again / "extension.json").write_text((out / "extension.json").read_text())
        model = load_model(again, dtype="float32", device="cpu", attn_implementation=ATTN.get(arch, "sdpa"))

    base_cfg = plain_model(bases[arch], arch).config
    rotary = rotary_embedding(model)
    if arch == "gpt2":
        assert rotary is None
    elif arch == "gemma3":  # method none: both layer types keep their own frequencies
        for layer_type in ("sliding_attention", "full_attention"):
            want = plain_inv_freq(16, base_cfg.rope_parameters[layer_type]["rope_theta"])
            assert torch.allclose(getattr(rotary, f"{layer_type}_inv_freq").double(), want, rtol=1e-6)
    else:
        want, want_scale = reference_rope(arch, method, base_cfg)
        assert torch.allclose(rotary.inv_freq.double(), want, rtol=1e-5, atol=1e-9), (rotary.inv_freq, want)
        assert float(rotary.attention_scaling) == pytest.approx(want_scale, abs=1e-6)
        # every key the model's rope dict has survives (Phi-3's partial_rotary_factor, Llama-3.1's band settings)
        kept = {k: v for k, v in base_cfg.rope_parameters.items() if method == "none" or k == "partial_rotary_factor"}
        assert kept.items() <= dict(model.config.rope_parameters).items()
    if method == "none":  # a model left alone is left alone: config RoPE and window as they were
        assert model.config.rope_parameters == base_cfg.rope_parameters if arch != "gpt2" else True
        if arch not in ("llama", "mistral", "qwen2", "gemma2", "phi3"):
            assert model.config.max_position_embeddings == base_cfg.max_position_embeddings

    ids = torch.randint(2, 128, (1, N_TOKENS if arch != "gpt2" else NATIVE),
                        generator=torch.Generator().manual_seed(3))
    reset_dynamic_rope(model)
    with torch.no_grad():
        got = model(ids).logits
    want_logits = reference_logits(arch, method, bases[arch], ids)
    assert torch.allclose(got, want_logits, atol=2e-4, rtol=1e-4), (got - want_logits).abs().max()


def test_phi3_position_id_method_with_ntk_frequencies(bases, tmp_path):
    make_extended_model(bases["phi3"], tmp_path / "x", "cream", {"frequency": "ntk"}, TARGET)
    model = load_model(tmp_path / "x", dtype="float32", device="cpu")
    want, _ = reference_rope("phi3", "ntk", plain_model(bases["phi3"], "phi3").config)
    assert want.shape == (4,)  # partial rotary: 8 of 16 channels rotate
    assert torch.allclose(rotary_embedding(model).inv_freq.double(), want, rtol=1e-5)


def test_gemma2_softcap_matters_for_entropy_abf(bases, tmp_path):
    """The soft cap is strong enough in the tiny Gemma-2 that dropping it would fail the matrix cell."""
    with pytest.warns(UserWarning, match="sliding_window=32"):
        make_extended_model(bases["gemma2"], tmp_path / "x", "entropy_abf", PARAMS["entropy_abf"], TARGET)
    model = load_model(tmp_path / "x", dtype="float32", device="cpu", attn_implementation="eager")
    ids = torch.randint(2, 128, (1, N_TOKENS), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        capped = model(ids).logits
        for layer in model.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        uncapped = model(ids).logits
    assert (capped - uncapped).abs().max() > 1e-3


def test_llama31_native_window_is_the_trained_window(bases):
    native = json.loads((bases["llama3.1"] / "native.json").read_text())
    assert native["native_window"] == NATIVE  # max_position_embeddings, not the first stage's 16
    assert native["rope_parameters"] == LLAMA3_BASE  # the full dict, scaling included


def test_composed_llama3_refuses_other_band_settings(bases, tmp_path):
    with pytest.raises(ValueError, match="methods.llama3.high_freq_factor: the base model already runs llama3"):
        make_extended_model(bases["llama3.1"], tmp_path / "x", "llama3", {"high_freq_factor": 8.0}, TARGET)


def test_gemma2_needs_eager_named(bases, tmp_path):
    make_extended_model(bases["gemma2"], tmp_path / "none", "none", {}, TARGET)
    with pytest.raises(ValueError, match="set model.attn_implementation: eager"):
        load_model(tmp_path / "none", dtype="float32", device="cpu", attn_implementation="sdpa")


def test_base_model_without_rope_evaluates(bases):
    """GPT-2: the base evaluation path (load, reset dynamic RoPE, forward) runs without a rotary embedding."""
    model = load_model(bases["gpt2"], dtype="float32", device="cpu")
    reset_dynamic_rope(model)
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(2, 40)[None]).logits).all()


def test_fsdp2_config_wraps_each_architectures_decoder_layer(bases):
    """configs/accelerate/fsdp2.yaml names no layer class: Accelerate then wraps model._no_split_modules,
    which for every architecture here is its own decoder layer."""
    import yaml

    cfg = yaml.safe_load(open("configs/accelerate/fsdp2.yaml"))["fsdp_config"]
    assert cfg["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in cfg
    for arch in ARCHITECTURES:
        model = plain_model(bases[arch], arch)
        layer_classes = {type(m).__name__ for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "Block"))}
        assert layer_classes and layer_classes <= set(model._no_split_modules), (arch, layer_classes)


# --------------------------------------------------------------------------- other released scalings


OTHER_SCALINGS = {
    # Phi-3-128k style: LongRoPE factors per rotated pair (partial rotary 0.5: 4 pairs), pre-training window 16
    "longrope": lambda: T.Phi3Config(**{**COMMON, "max_position_embeddings": 64}, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
        "short_factor": [1.0, 1.1, 1.3, 1.6], "long_factor": [1.0, 1.5, 2.5, 4.0],
        "original_max_position_embeddings": 16}),
    # a YaRN model (DeepSeek / Qwen2.5-with-YaRN style), with DeepSeek's mscale pair
    "yarn": lambda: T.Qwen2Config(**COMMON, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
        "mscale": 0.707, "mscale_all_dim": 0.707}),
}


@pytest.fixture(scope="module")
def scaled_bases(tmp_path_factory):
    """Like `bases` (same setup on purpose), for models that carry their own RoPE scaling."""
    root = tmp_path_factory.mktemp("scaled")
    tok = word_tokenizer()
    out = {}
    for name, make in OTHER_SCALINGS.items():
        torch.manual_seed(0)
        out[name] = save_base(AutoModelForCausalLM.from_config(make()), tok, root, name)
    return out


@pytest.mark.parametrize("kind", list(OTHER_SCALINGS))
def test_released_scaling_kept_by_none(kind, scaled_bases, tmp_path):
    """method none: the model's own LongRoPE / YaRN frequencies (checked by verify_rope against longctx.rope's
    formulas at load) and its logits stay exactly as they were; other methods are refused."""
    make_extended_model(scaled_bases[kind], tmp_path / "none", "none", {}, TARGET)
    model = load_model(tmp_path / "none", dtype="float32", device="cpu")
    base = plain_model(scaled_bases[kind], kind)
    assert model.config.rope_parameters == base.config.rope_parameters
    assert torch.equal(rotary_embedding(model).inv_freq, rotary_embedding(base).inv_freq)
    ids = torch.randint(2, 128, (1, 48), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, base(ids).logits, atol=1e-6)
    with pytest.raises(ValueError, match=SCALED):
        make_extended_model(scaled_bases[kind], tmp_path / "abf", "abf", {}, TARGET)


def test_yarn_base_scaled_further_by_yarn(scaled_bases, tmp_path):
    """yarn on a YaRN model: factor 4 x (256 / 64) over the same 16-token pre-training window, mscale kept."""
    make_extended_model(scaled_bases["yarn"], tmp_path / "x", "yarn", {}, TARGET)
    model = load_model(tmp_path / "x", dtype="float32", device="cpu")
    base_rope = plain_model(scaled_bases["yarn"], "yarn").config.rope_parameters
    want, scale = transformers_inv_freq(model.config, {**base_rope, "factor": 16.0}, TARGET)
    assert torch.allclose(rotary_embedding(model).inv_freq.double(), want, rtol=1e-6)
    assert float(rotary_embedding(model).attention_scaling) == pytest.approx(scale)
