"""Random-weight models of named real shapes (longctx.shapes): configs, fast init, the config-only pipeline folder."""

import json

import pytest
import torch

from longctx import shapes
from longctx.modeling import load_model, make_extended_model

# Parameter counts as published on each model's Hugging Face page (rounded to 10M), an independent check
# of the hand-copied configs.
PUBLISHED_PARAMS_B = {"llama2-7b": 6.74, "llama3.1-8b": 8.03, "qwen2.5-7b": 7.62, "mistral-7b": 7.25,
                      "llama3.2-1b": 1.24}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_B))
def test_shape_parameter_count_matches_published(name):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shapes.shape_config(name))
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e9, 2) == PUBLISHED_PARAMS_B[name]


def test_unknown_shape_names_allowed_ones():
    with pytest.raises(ValueError, match="llama3.1-8b"):
        shapes.shape_name("shape:llama-9000")
    from longctx.params import ModelParams, ParamsError

    with pytest.raises(ParamsError, match="model.name_or_path.*shape:mistral-7b"):
        ModelParams(name_or_path="shape:nope").check("model")
    ModelParams(name_or_path="shape:tiny").check("model")


def test_random_model_is_deterministic_and_initialised():
    cfg = shapes.shape_config("tiny")
    a = shapes.random_model(cfg, "cpu", torch.float32, seed=3)
    b = shapes.random_model(cfg, "cpu", torch.float32, seed=3)
    c = shapes.random_model(cfg, "cpu", torch.float32, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    w = sa["model.layers.0.mlp.down_proj.weight"]
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002
    assert torch.equal(sa["model.layers.1.input_layernorm.weight"], torch.ones(64))
    ids = torch.randint(0, cfg.vocab_size, (1, 16))
    assert torch.isfinite(a(ids).logits).all()


@pytest.mark.parametrize("name", ["tiny", "llama3.2-1b"])
def test_rotary_buffers_rebuilt_after_meta_init(name):
    """The rotary frequencies (llama3 scaling included) equal those of a model built the ordinary way."""
    from transformers import AutoModelForCausalLM

    small = dict(hidden_size=128, intermediate_size=64, num_hidden_layers=1, vocab_size=32) if name != "tiny" else {}
    cfg = shapes.shape_config(name, **small)
    fast = shapes.random_model(cfg, "cpu", torch.float32)
    plain = AutoModelForCausalLM.from_config(cfg)
    assert torch.equal(fast.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq)
    assert fast.model.rotary_emb.attention_scaling == plain.model.rotary_emb.attention_scaling
    if name == "llama3.2-1b":  # llama3 scaling really in force: low frequencies divided by the factor 32
        hd = cfg.head_dim
        default = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        assert torch.allclose(fast.model.rotary_emb.inv_freq[-1], default[-1] / 32)
        assert fast.lm_head.weight.data_ptr() == fast.model.embed_tokens.weight.data_ptr()  # tied


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[UNK]")


def test_config_only_folder_through_extend_and_load(tmp_path):
    base = tmp_path / "base"
    record = shapes.materialize_shape("shape:tiny", base, seed=7, tokenizer=_word_tokenizer())
    assert not any(f.suffix in (".safetensors", ".bin") for f in base.iterdir())
    assert shapes.has_random_weights(base)
    assert record["native_window"] == 2048 and record["source"] == "shape:tiny"
    assert json.loads((base / "shape.json").read_text())["seed"] == 7

    m1 = load_model(base, dtype="float32", device="cpu")
    m2 = load_model(base, dtype="float32", device="cpu")
    ref = shapes.random_model(shapes.shape_config("tiny"), "cpu", torch.float32, seed=7)
    for k, v in ref.state_dict().items():
        assert torch.equal(m1.state_dict()[k], v) and torch.equal(m2.state_dict()[k], v), k

    ext_dir = tmp_path / "extended"
    make_extended_model(base, ext_dir, "yarn", {}, 8192)
    assert shapes.has_random_weights(ext_dir)  # the marker travels with the config-only files
    ext = load_model(ext_dir, dtype="float32", device="cpu")  # verify_rope runs inside
    assert ext.config.rope_parameters["rope_type"] == "yarn"
    assert torch.equal(ext.model.embed_tokens.weight, ref.model.embed_tokens.weight)

    # A folder that holds weights (a fully fine-tuned model) loads them, marker or not.
    saved = tmp_path / "saved"
    m1.model.embed_tokens.weight.data.add_(1.0)
    m1.save_pretrained(saved)
    (saved / "shape.json").write_text((base / "shape.json").read_text())
    assert not shapes.has_random_weights(saved)
    back = load_model(saved, dtype="float32", device="cpu")
    assert torch.equal(back.model.embed_tokens.weight, m1.model.embed_tokens.weight)


def test_base_model_stage_entry_dispatches_shapes(tmp_path, monkeypatch):
    from longctx.base_model import materialize_base_model

    monkeypatch.setattr(shapes, "embedded_tokenizer", _word_tokenizer)
    record = materialize_base_model("shape:tiny", tmp_path / "b")
    assert record["architecture"] == "LlamaForCausalLM" and shapes.has_random_weights(tmp_path / "b")
