"""Load, extend, save and verify models.

A saved extended model is a normal Hugging Face model folder plus ``extension.json``, the
documented record of the method:

    {"method": ..., "params": {...}, "native_window": ..., "target_length": ...,
     "rope_parameters": {...}, "max_position_embeddings": ..., "attention": {...} | null,
     "position_ids": {...} | null}

RoPE methods that transformers implements natively are written into ``config.json`` as well,
so plain ``AutoModelForCausalLM.from_pretrained`` reproduces them. Attention methods
(Entropy-ABF, SelfExtend) need our attention functions: ``load_model`` applies them, and a
plain transformers load silently runs ordinary attention, so ``config.json`` also carries
``longctx_extension`` as a visible marker. After every load, ``verify_rope`` checks that the
frequencies and scaling in force are the intended ones.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from longctx import rope
from longctx.attention import apply_attention
from longctx.methods import Extension, build_extension, expected_rope, rope_kind

EXTENSION_FILE = "extension.json"
NATIVE_FILE = "native.json"


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU, float32 on the CPU (bf16 matmuls are several times slower on most CPUs)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rotary_embedding(model):
    """The model's rotary embedding module, or None for a model without RoPE (GPT-2's learned positions)."""
    return getattr(model.get_decoder(), "rotary_emb", None)


def set_rope(config, ext: Extension) -> None:
    """Write the extension's RoPE settings into a config.

    transformers 5 keeps RoPE in one ``rope_parameters`` dict that includes ``rope_theta`` (and
    ``partial_rotary_factor`` for Phi-3 style models). The extension's dict was built from the base
    model's full dict, so every key the model has survives; we replace the dict as a whole (never
    assign ``rope_scaling`` after the fact, which loses the model's theta) and let transformers
    validate it. A model without RoPE is left as it is.
    """
    if ext.rope_parameters is None:
        return
    config.rope_parameters = {k: (dict(v) if isinstance(v, dict) else v) for k, v in ext.rope_parameters.items()}
    config.max_position_embeddings = ext.max_position_embeddings
    if hasattr(config, "validate_rope"):
        try:
            config.validate_rope()
        except ValueError as e:  # e.g. Phi-3 accepts only plain RoPE and longrope
            kind = ext.rope_parameters.get("rope_type")
            raise ValueError(
                f"method: {ext.method} is not supported for {type(config).__name__}: its config refuses rope_type "
                f"{kind!r} ({e}). Methods that keep plain RoPE work: ntk, abf, entropy_abf, selfextend "
                "(and cream/pose/randpos with frequency: ntk)"
            ) from e


def extend_model(model, ext: Extension, default_attn: str = "sdpa"):
    """Apply ``ext`` to a loaded model in place: new rotary embedding, attention implementation."""
    set_rope(model.config, ext)
    rotary = rotary_embedding(model)
    if rotary is not None:
        device = next(iter(rotary.buffers())).device
        model.get_decoder().rotary_emb = type(rotary)(config=model.config).to(device)
    apply_attention(model, ext.attention, default_attn)
    verify_rope(model, ext)
    return model


def _check_frequencies(what: str, got_freq, got_scale, want_freq, want_scale, atol: float) -> None:
    got = got_freq.detach().double().cpu()
    if got.shape != want_freq.shape or not torch.allclose(got, want_freq, rtol=1e-5, atol=atol):
        diff = float((got - want_freq).abs().max()) if got.shape == want_freq.shape else f"shape {tuple(got.shape)}"
        raise RuntimeError(
            f"RoPE check failed for {what}: the model's inverse frequencies differ from the intended ones "
            f"(max abs diff {diff}); was the config edited?"
        )
    if abs(float(got_scale) - want_scale) > 1e-6:
        raise RuntimeError(f"RoPE check failed for {what}: attention scaling {float(got_scale)} != {want_scale}")


def verify_rope(model, ext: Extension, atol: float = 1e-6) -> None:
    """Check that the rotary frequencies and attention scaling in force are the extension's.

    Compares transformers' rotary embedding against ``longctx.rope``, computed from the base
    model's RoPE and the method's parameters (``methods.expected_rope``), and the attention
    implementation against the extension. A saved model whose extension silently vanished on
    reload fails here instead of producing quiet garbage. Per-layer-type RoPE (Gemma-3, kept
    under ``method: none``) is checked for every layer type; a model without RoPE must have none.
    """
    rotary = rotary_embedding(model)
    kind = rope_kind(ext.base_rope_parameters)
    what = f"method {ext.method}"
    if kind == "none":
        if rotary is not None:
            raise RuntimeError(f"RoPE check failed for {what}: the extension records no RoPE but the model has one")
    elif kind == "per_layer":
        for layer_type, params in ext.base_rope_parameters.items():
            want = rope.inv_freq_from_rope_parameters(params, head_dim(model.config), ext.max_position_embeddings)
            _check_frequencies(f"{what} ({layer_type} layers)", getattr(rotary, f"{layer_type}_inv_freq"),
                               getattr(rotary, f"{layer_type}_attention_scaling", 1.0), *want, atol)
    else:
        want = expected_rope(ext, head_dim(model.config))
        _check_frequencies(what, rotary.inv_freq, getattr(rotary, "attention_scaling", 1.0), *want, atol)
    want_attn = ext.attention["method"] if ext.attention else None
    got_attn = (getattr(model.config, "longctx_extension", None) or {}).get("method")
    if want_attn != got_attn or (want_attn and not model.config._attn_implementation.startswith("longctx_")):
        raise RuntimeError(f"attention check failed: want {want_attn}, model runs {model.config._attn_implementation}")


def reset_dynamic_rope(model) -> None:
    """Forget the frequencies a dynamic RoPE grew to on an earlier, longer input.

    transformers' dynamic NTK only grows its frequencies and resets them only for inputs strictly
    shorter than the native window, so without this an 8192-token prompt scored after a 32k one
    would use the 32k frequencies: results would depend on evaluation order. Every independent
    sequence is scored from the frequencies its own length implies (one prefill; generation that
    grows past the window still grows them, with cached keys keeping the rotation they had).
    """
    rotary = rotary_embedding(model)
    original = getattr(rotary, "original_inv_freq", None)
    if "dynamic" in str(getattr(rotary, "rope_type", "")) and original is not None:
        rotary.inv_freq = original.to(rotary.inv_freq.device)
        rotary.max_seq_len_cached = rotary.original_max_seq_len


def read_extension(path: Path) -> Extension | None:
    f = Path(path) / EXTENSION_FILE
    return Extension.from_dict(json.loads(f.read_text())) if f.exists() else None


def load_model(path: str | Path, dtype: str = "auto", device: torch.device | None = None,
               attn_implementation: str = "sdpa"):
    """Load a model folder written by this pipeline with its extension in force, and verify it.

    ``attn_implementation`` (params ``model.attn_implementation``) is used when the method needs no
    attention function of ours; models with logit soft-capping (Gemma-2) need ``eager``.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no model here (config.json missing); run the stage that makes it")
    device = torch.device(device) if device is not None else pick_device()
    torch_dtype = resolve_dtype(dtype, device)
    from longctx.shapes import has_random_weights, load_random

    try:
        if has_random_weights(path):  # a shape:<name> folder: config only, weights made on the device
            model = load_random(path, device, torch_dtype, attn_implementation)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype,
                                                         attn_implementation=attn_implementation,
                                                         trust_remote_code=False)
    except ValueError as e:
        if "does not support" not in str(e):
            raise
        raise ValueError(f"model.attn_implementation: {path} cannot run {attn_implementation!r} "
                         f"({str(e).split('.')[0]}); set model.attn_implementation: eager") from e
    model.to(device).eval()
    ext = read_extension(path)
    if ext is not None:
        if ext.rope_parameters is not None and dict(model.config.rope_parameters) != ext.rope_parameters:
            warnings.warn(f"{path}: config.json RoPE settings differ from extension.json; applying extension.json",
                          stacklevel=2)
        extend_model(model, ext, attn_implementation)
    elif getattr(model.config, "longctx_extension", None):
        warnings.warn(f"{path}: config carries longctx_extension but extension.json is missing", stacklevel=2)
    return model


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def native_record(base_dir: Path) -> dict:
    f = Path(base_dir) / NATIVE_FILE
    if not f.exists():
        raise FileNotFoundError(f"{f}: missing; run the base_model stage first")
    return json.loads(f.read_text())


def make_extended_model(base_dir: Path, out_dir: Path, method: str, method_params: dict, target_length: int,
                        native_window: int | None = None) -> Extension:
    """Extend the base model with ``method`` and save it to ``out_dir`` (atomically), with extension.json.

    Only config files change: the weights are cloned (copy-on-write, no extra disk where the
    filesystem can) or copied from the base model, never hard-linked, so an in-place write to one
    model cannot change the other or the DVC cache.
    """
    from transformers import AutoConfig

    from longctx.io import AtomicDir, atomic_write_json, copy_file

    native = native_record(base_dir)
    config = AutoConfig.from_pretrained(base_dir, trust_remote_code=False)  # our own folder: never its code
    base_rope = native.get("rope_parameters") or native.get("rope_theta")  # the full dict (older records: theta)
    if not getattr(config, "rope_parameters", None):
        base_rope = None
    window = native_window or native["native_window"]
    ext = build_extension(method, method_params, target_length, window, base_rope, head_dim(config),
                          config.max_position_embeddings)
    check_sliding_window(config, ext)
    if ext.rope_parameters is None and target_length > config.max_position_embeddings:
        warnings.warn(f"{type(config).__name__} has learned positions for {config.max_position_embeddings} tokens and "
                      f"no RoPE: no input can be longer (target_length {target_length}); keep eval.lengths <= "
                      f"{config.max_position_embeddings}", stacklevel=2)
    set_rope(config, ext)
    if ext.attention:
        config.longctx_extension = dict(ext.attention)
    with AtomicDir(out_dir) as tmp:
        for f in Path(base_dir).iterdir():
            if f.name in ("config.json", EXTENSION_FILE):
                continue
            copy_file(f, tmp / f.name)  # a clone or a copy, never a hard link (issue 18: shared inodes)
        config.save_pretrained(tmp)
        atomic_write_json(tmp / EXTENSION_FILE, ext.to_dict())
    return ext


# What the finetune stage wrote (next to load_model so evaluation does not import training).
FINETUNE_FILE = "finetune.json"  # {"mode": "lora" | "full" | "none", "steps", "method"}


def load_finetuned(finetuned_dir: Path, extended_dir: Path, dtype: str = "auto", device=None,
                   attn_implementation: str = "sdpa"):
    """The fine-tuned model ready for evaluation: extended model, plus the merged adapter or full weights."""
    finetuned_dir, extended_dir = Path(finetuned_dir), Path(extended_dir)
    info_file = finetuned_dir / FINETUNE_FILE
    if not info_file.exists():
        raise FileNotFoundError(f"{info_file}: missing; run the finetune stage first")
    info = json.loads(info_file.read_text())
    if info["mode"] == "full":
        return load_model(finetuned_dir, dtype=dtype, device=device, attn_implementation=attn_implementation)
    model = load_model(extended_dir, dtype=dtype, device=device, attn_implementation=attn_implementation)
    if info["mode"] == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, finetuned_dir).merge_and_unload().eval()
        verify_rope(model, read_extension(extended_dir))
    return model


def sliding_window_layers(config) -> tuple[int, int, int] | None:
    """(sliding_window, layers that use it, all layers), or None when no layer uses sliding-window attention.

    Mistral v0.1 slides in every layer (no ``layer_types``); Gemma-2/3 and Qwen2 with ``use_sliding_window``
    list the sliding layers in ``config.layer_types``.
    """
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layers = config.num_hidden_layers
    types = getattr(config, "layer_types", None)
    sliding = sum(t == "sliding_attention" for t in types) if types else layers
    return (int(window), sliding, layers) if sliding else None


def check_sliding_window(config, ext: Extension) -> None:
    """Name the limit sliding-window attention puts on an extension: refuse SelfExtend, warn for the others.

    A sliding layer never attends further back than ``sliding_window`` tokens whatever RoPE does; SelfExtend's
    grouped keys all lie further back than its neighbour window, so in those layers it would silently be plain
    windowed attention.
    """
    limit = sliding_window_layers(config)
    if limit is None or ext.method == "none" or ext.target_length <= limit[0]:
        return
    window, sliding, layers = limit
    where = f"{sliding} of {layers} layers use sliding-window attention (config sliding_window={window})"
    if ext.method == "selfextend":
        raise ValueError(f"method: selfextend is not supported here: {where}, which hides SelfExtend's grouped keys "
                         "(they lie beyond its neighbour window). Use a RoPE method, or a model without sliding window")
    warnings.warn(
        f"method {ext.method}: {where}: those layers see only the last {window} tokens at any length; "
        + (f"only the other {layers - sliding} layers attend across the whole {ext.target_length}-token target."
           if sliding < layers else
           f"no layer attends further, so tokens beyond {window} reach a position only through stacked layers."),
        stacklevel=2,
    )

