"""Extend -> save -> load keeps every method in force, and the checks catch a vanished extension."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models

from longctx.base_model import materialize_base_model
from longctx.methods import METHODS
from longctx.modeling import load_model, make_extended_model, read_extension, verify_rope
from tests.conftest import tiny_llama_config

NATIVE, TARGET = 64, 256


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny Llama saved locally, then materialised through the same code path as a hub model."""
    src = tmp_path_factory.mktemp("src")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(max_position_embeddings=NATIVE)).save_pretrained(src)
    vocab = {f"t{i}": i for i in range(128)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                  eos_token="t1", bos_token="t2")
    tok.save_pretrained(src)
    out = tmp_path_factory.mktemp("base") / "base"
    record = materialize_base_model(str(src), out)
    assert record["native_window"] == NATIVE and record["rope_theta"] == 10000.0
    return out


def test_native_record_written(base_dir):
    native = json.loads((base_dir / "native.json").read_text())
    assert native["rope_parameters"]["rope_theta"] == 10000.0
    assert native["num_key_value_heads"] == 2


def test_missing_local_model_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        materialize_base_model("./no/such/model", tmp_path / "x")


@pytest.mark.parametrize("method", list(METHODS))
def test_save_load_same_logits(method, base_dir, tmp_path):
    out = tmp_path / "ext"
    params = {"selfextend": {"window": 16}}.get(method, {})
    make_extended_model(base_dir, out, method, params, TARGET)
    model = load_model(out, dtype="float32", device="cpu")
    ids = torch.randint(0, 128, (1, 150), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
    # Save the loaded model again (as fine-tuning does) and reload it.
    again = tmp_path / "again"
    model.save_pretrained(again)
    (again / "extension.json").write_text((out / "extension.json").read_text())
    reloaded = load_model(again, dtype="float32", device="cpu")
    with torch.no_grad():
        after = reloaded(ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    # The base model's theta survives every save and load (the rope_scaling trap of transformers 5).
    theta = reloaded.config.rope_parameters["rope_theta"]
    if method in ("abf", "entropy_abf", "ntk"):
        assert theta > 10000.0
    else:
        assert theta == 10000.0
    assert read_extension(again).method == method
    expected_attn = {"entropy_abf": "longctx_entropy_abf", "selfextend": "longctx_selfextend"}.get(method, "sdpa")
    assert reloaded.config._attn_implementation == expected_attn


@pytest.mark.parametrize("method", ["pi", "yarn", "llama3", "dynamic_ntk", "abf", "ntk"])
def test_native_methods_reload_with_plain_transformers(method, base_dir, tmp_path):
    out = tmp_path / "ext"
    make_extended_model(base_dir, out, method, {}, TARGET)
    plain = AutoModelForCausalLM.from_pretrained(out)
    verify_rope(plain, read_extension(out))  # no longctx code involved in loading


def test_vanished_extension_is_caught(base_dir, tmp_path):
    out = tmp_path / "ext"
    make_extended_model(base_dir, out, "yarn", {}, TARGET)
    cfg = json.loads((out / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    (out / "config.json").write_text(json.dumps(cfg))
    plain = AutoModelForCausalLM.from_pretrained(out)
    with pytest.raises(RuntimeError, match="RoPE check failed"):
        verify_rope(plain, read_extension(out))
    # load_model trusts extension.json, says so, and ends with the intended frequencies.
    with pytest.warns(UserWarning, match="differ from extension.json"):
        model = load_model(out, dtype="float32", device="cpu")
    verify_rope(model, read_extension(out))


def test_entropy_abf_attention_is_query_scaling_past_window(base_dir, tmp_path):
    """Layers 0-1 untouched; later layers scale query i by max(1, log(i+1)/log(c))."""
    out = tmp_path / "ext"
    make_extended_model(base_dir, out, "entropy_abf", {"skip_layers": 1}, TARGET)
    model = load_model(out, dtype="float32", device="cpu")
    plain = load_model(out, dtype="float32", device="cpu")
    plain.set_attn_implementation("sdpa")
    captured = {}

    def grab(name):
        def hook(module, args, kwargs, output):
            captured[name] = output[0].detach()
        return hook

    for tag, m in (("ours", model), ("plain", plain)):
        for i, layer in enumerate(m.model.layers):
            layer.self_attn.register_forward_hook(grab(f"{tag}{i}"), with_kwargs=True)
    ids = torch.randint(0, 128, (1, 200), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model(ids)
        plain(ids)
    # Layer 0 is skipped (skip_layers=1): identical. Layer 1: identical inside the window, different after.
    assert torch.allclose(captured["ours0"], captured["plain0"], atol=1e-6)
    assert torch.allclose(captured["ours1"][:, :NATIVE], captured["plain1"][:, :NATIVE], atol=1e-5)
    assert not torch.allclose(captured["ours1"][:, NATIVE + 10:], captured["plain1"][:, NATIVE + 10:], atol=1e-4)

    # Reference: eager attention of layer 1 with explicitly scaled logits, from its inputs.
    attn = model.model.layers[1].self_attn
    x = torch.randn(1, 100, 64)
    pos = torch.arange(100, 200)[None]
    cos, sin = model.model.rotary_emb(x, pos)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    q = attn.q_proj(x).view(1, 100, 4, 16).transpose(1, 2)
    k = attn.k_proj(x).view(1, 100, 2, 16).transpose(1, 2)
    v = attn.v_proj(x).view(1, 100, 2, 16).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k, v = repeat_kv(k, 2), repeat_kv(v, 2)
    scale = torch.tensor([max(1.0, math.log(i + 1) / math.log(NATIVE)) for i in range(100, 200)])
    logits = (q @ k.transpose(-1, -2)) / 4.0 * scale[None, None, :, None]
    logits = logits.masked_fill(torch.ones(100, 100, dtype=torch.bool).triu(1), float("-inf"))
    want = (logits.softmax(-1) @ v).transpose(1, 2).reshape(1, 100, 64)
    with torch.no_grad():
        got = attn(x, position_embeddings=(cos, sin), attention_mask=None, position_ids=pos)[0]
    assert torch.allclose(got, attn.o_proj(want), atol=1e-5)


def test_unknown_method_and_short_target(base_dir, tmp_path):
    with pytest.raises(ValueError, match="method: unknown method 'nope'; allowed: none, pi"):
        make_extended_model(base_dir, tmp_path / "x", "nope", {}, TARGET)
    with pytest.raises(ValueError, match="target_length: must exceed the native window"):
        make_extended_model(base_dir, tmp_path / "x", "yarn", {}, NATIVE)
    with pytest.raises(ValueError, match="methods.yarn.bogus: unknown key"):
        make_extended_model(base_dir, tmp_path / "x", "yarn", {"bogus": 1}, TARGET)
    assert not (tmp_path / "x").exists()


def test_rope_method_on_a_model_without_rope(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "gpt2" / "native.json").write_text(json.dumps({"native_window": 1024, "rope_theta": None}))
    with pytest.raises(ValueError, match="method: yarn needs a RoPE model"):
        make_extended_model(tmp_path / "gpt2", tmp_path / "out", "yarn", {}, 4096)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method,params,want", [("yarn", {"attention_factor": 1.0}, 1.0),
                                                ("yarn", {}, None), ("cream", {}, 1.0)])
def test_yarn_temperature_reaches_the_loaded_model(method, params, want, base_dir, tmp_path):
    # The knob must survive save + load: the rotary embedding scales cos/sin by it (logits by its square).
    from longctx.modeling import rotary_embedding

    make_extended_model(base_dir, tmp_path / "ext", method, params, TARGET)
    model = load_model(tmp_path / "ext", dtype="float32", device="cpu")
    native = json.loads((base_dir / "native.json").read_text())["native_window"]
    expected = want if want is not None else 0.1 * math.log(TARGET / native) + 1
    assert rotary_embedding(model).attention_scaling == pytest.approx(expected)
