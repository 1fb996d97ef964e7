"""Which kernels a training step runs: the SDPA backend, selective activation checkpointing, Liger.

Three switches of ``TrainParams``, each a plain function here so ``train.finetune``, the max-length
finder and the throughput benchmark share them:

- ``sdpa_backend(name)``: a context that makes PyTorch's ``scaled_dot_product_attention`` prefer one
  backend (cuDNN, flash, memory-efficient, math), or run its flash backend on FlashAttention-4
  (``fa4``: the ``flash-attn-4`` package through ``torch.nn.attention.activate_flash_attention_impl``).
  Every method whose attention goes through SDPA uses it (plain RoPE methods and Entropy-ABF).
- ``checkpointing_kwargs(mode)``: arguments for transformers' ``gradient_checkpointing_enable``. ``full``
  recomputes each decoder layer in the backward pass; ``selective`` recomputes everything except the
  attention kernel, whose outputs are kept (PyTorch's selective activation checkpointing). At long
  lengths attention is most of the compute, so ``selective`` costs little time for
  T x hidden x 2 bytes per layer.
- ``apply_liger(model)``: Liger's Triton RMSNorm and SwiGLU modules in place of the Llama ones. RoPE is
  left to transformers: the extension methods change the rotary embedding, and the rotation itself
  is cheap.
- ``compile_layers(model)``: ``torch.compile`` each decoder layer, so the norms, rotary, SwiGLU and
  residual adds around the matmuls and the attention kernel run fused.

And three memory knobs for long sequences: ``keep_activations(model, n)`` (the last n layers not
checkpointed), ``tile_mlp(model, chunk_tokens)`` (each MLP over the sequence in checkpointed chunks) and
``offload_checkpoints(model, n)`` (the first n layers' checkpointed inputs in host memory).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from longctx.params import CHECKPOINTING, SDPA_BACKENDS  # the allowed values live with the params

FA4_IMPL = "FA4_longctx"


def _backend_enum(name: str):
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "fa4": SDPBackend.FLASH_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH}[name]


def check_fa4_available() -> None:
    """Raise a clear error unless FlashAttention-4 can run here (package installed, SM90/SM100 GPU)."""
    import importlib.util

    if not torch.cuda.is_available():
        raise RuntimeError("train.sdpa_backend: fa4 needs a CUDA GPU (SM90 or SM100); use auto on CPU")
    major, _ = torch.cuda.get_device_capability()
    if major not in (9, 10):
        raise RuntimeError(f"train.sdpa_backend: fa4 needs an SM90/SM100 GPU, this one is SM{major}x; use cudnn or auto")
    if importlib.util.find_spec("flash_attn") is None or importlib.util.find_spec("flash_attn.cute") is None:
        raise RuntimeError("train.sdpa_backend: fa4 needs the flash-attn-4 package (pip install flash-attn-4)")


@contextlib.contextmanager
def sdpa_backend(name: str = "auto"):
    """Within the block, SDPA tries backend ``name`` first (falling back to the others, in PyTorch's
    order, for inputs it cannot take, e.g. an explicit mask for flash). ``auto`` changes nothing.

    Wrap the forward *and* the backward pass: with gradient checkpointing the backward recomputes the
    forward, and must pick the same kernel.
    """
    if name not in SDPA_BACKENDS:
        raise ValueError(f"sdpa backend {name!r}; allowed: {', '.join(SDPA_BACKENDS)}")
    if name == "auto":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = _backend_enum(name)
    rest = [b for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.MATH) if b != first]
    fa4 = None
    if name == "fa4":
        from torch.nn.attention import (activate_flash_attention_impl, register_flash_attention_impl,
                                        restore_flash_attention_impl)
        from torch.nn.attention._fa4 import register_flash_attention_fa4

        check_fa4_available()
        # PyTorch's own FA4 glue, pointed at longctx.fa4_compat (see there why)
        register_flash_attention_impl(
            FA4_IMPL, register_fn=functools.partial(register_flash_attention_fa4, module_path="longctx.fa4_compat"))
        activate_flash_attention_impl(FA4_IMPL)
        fa4 = restore_flash_attention_impl
    try:
        with sdpa_kernel([first, *rest], set_priority=True):
            yield
    finally:
        if fa4 is not None:
            fa4()


def attention_ops() -> set:
    """The aten (and flash-attn) ops that run the attention kernel: what ``selective`` keeps."""
    names = ["_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu",
             "_flash_attention_forward", "_efficient_attention_forward"]
    ops = {getattr(torch.ops.aten, n).default for n in names if hasattr(torch.ops.aten, n)}
    flash_attn = getattr(torch.ops, "flash_attn", None)  # flash-attn 2's custom ops, when installed
    for n in ("_flash_attn_forward", "_flash_attn_varlen_forward"):
        op = getattr(flash_attn, n, None) if flash_attn is not None else None
        if op is not None:
            ops.add(op.default)
    # FlexAttention (SelfExtend's CUDA path) is a higher-order op that SAC cannot store in torch 2.11
    # ("flex_attention encountered during backward, but not found in storage"): it is recomputed.
    return ops


def _keep_attention_policy(ops, ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in ops else CheckpointPolicy.PREFER_RECOMPUTE


def checkpointing_kwargs(mode: str) -> dict | None:
    """``gradient_checkpointing_kwargs`` for transformers, or None for ``none``."""
    if mode not in CHECKPOINTING:
        raise ValueError(f"gradient checkpointing {mode!r}; allowed: {', '.join(CHECKPOINTING)}")
    if mode == "none":
        return None
    kwargs = {"use_reentrant": False}
    if mode == "selective":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        policy = functools.partial(_keep_attention_policy, attention_ops())
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, policy)
    return kwargs


def apply_liger(model) -> int:
    """Swap each decoder layer's RMSNorms and SwiGLU MLP (and the final norm) for Liger's Triton modules,
    weights carried over. Llama-style models only; returns the number of modules swapped."""
    try:
        from liger_kernel.transformers import LigerRMSNorm, LigerSwiGLUMLP
    except ImportError as e:
        raise RuntimeError("train.liger: needs the liger-kernel package (pip install liger-kernel)") from e
    if not torch.cuda.is_available():
        raise RuntimeError("train.liger: Liger's kernels are Triton kernels and need a CUDA GPU; set liger: false")
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(base, "layers", None)
    if layers is None or not all(hasattr(layer, n) for layer in layers
                                 for n in ("mlp", "input_layernorm", "post_attention_layernorm")):
        raise RuntimeError(f"train.liger: supported for Llama-style decoders only, not {type(model).__name__}")
    if getattr(model.config, "hidden_act", "silu") not in ("silu", "swish"):
        raise RuntimeError(f"train.liger: SwiGLU needs hidden_act silu, the model has {model.config.hidden_act}")

    def swap_norm(old):
        eps = getattr(old, "variance_epsilon", None) or getattr(old, "eps", 1e-6)
        new = LigerRMSNorm(old.weight.shape[0], eps=eps).to(old.weight.device, old.weight.dtype)
        new.load_state_dict(old.state_dict())
        return new

    def swap_mlp(old):
        new = LigerSwiGLUMLP(model.config, intermediate_size=old.gate_proj.out_features)
        new = new.to(old.gate_proj.weight.device, old.gate_proj.weight.dtype)
        new.load_state_dict(old.state_dict())
        return new

    swapped = 0
    for layer in layers:
        layer.input_layernorm = swap_norm(layer.input_layernorm)
        layer.post_attention_layernorm = swap_norm(layer.post_attention_layernorm)
        layer.mlp = swap_mlp(layer.mlp)
        swapped += 3
    if hasattr(base, "norm"):
        base.norm = swap_norm(base.norm)
        swapped += 1
    return swapped


def compile_layers(model) -> int:
    """``torch.compile`` every decoder layer in place (the attention kernel inside stays the SDPA
    backend chosen, called from the compiled code). Returns the number of layers compiled.

    Each new sequence length compiles once more (then shapes are marked dynamic); the first steps
    are slow. Not with selective checkpointing: its policy cannot see inside a compiled layer.
    """
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(base, "layers", None)
    if layers is None:
        raise RuntimeError(f"train.compile: no decoder layers found in {type(model).__name__}")
    for layer in layers:
        layer.compile()
    return len(layers)


def keep_activations(model, plain_layers: int) -> int:
    """Partial checkpointing: the last ``plain_layers`` decoder layers run without checkpointing (they keep
    every activation for the backward pass); the others keep the mode ``gradient_checkpointing_enable`` set.

    Memory for speed, one layer at a time: on the Llama-3.1-8B shape at 32k tokens a plain layer holds about
    4.2 GiB against 0.5 GiB under selective checkpointing, and skips the recompute of its projections
    (docs/RESULTS.md, "Fifth run": 20 plain layers of 32 gave 1.65x the fully checkpointed baseline).
    Call after checkpointing is enabled (and before or after LoRA wrapping). Returns the layers switched.
    """
    if plain_layers < 0:
        raise ValueError(f"plain_layers must be >= 0, got {plain_layers}")
    layers = _decoder_layers(model, "keep_activations")
    if plain_layers > len(layers):
        raise ValueError(f"plain_layers ({plain_layers}) exceeds the model's {len(layers)} decoder layers")
    for layer in layers[len(layers) - plain_layers:]:
        layer.gradient_checkpointing = False
    return plain_layers


def _decoder_layers(model, who: str) -> list:
    """The decoder layers of ``model`` (a PEFT wrapper is looked through); RuntimeError naming ``who`` if none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = base.get_decoder() if hasattr(base, "get_decoder") else base
    layers = list(getattr(base, "layers", None) or [])
    if not layers:
        raise RuntimeError(f"{who}: no decoder layers found in {type(model).__name__}")
    return layers


def _tiled_mlp_forward(forward, chunk_tokens: int, x, *args, **kwargs):
    """``forward`` (an MLP's own bound forward) over ``x`` in chunks of ``chunk_tokens`` along dim -2, each
    chunk checkpointed when gradients are on; the outputs concatenated."""
    if x.dim() < 2 or x.shape[-2] <= chunk_tokens:
        return forward(x, *args, **kwargs)
    chunks = x.split(chunk_tokens, dim=-2)
    if torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        outs = [checkpoint(forward, c, *args, use_reentrant=False, **kwargs) for c in chunks]
    else:
        outs = [forward(c, *args, **kwargs) for c in chunks]
    return torch.cat(outs, dim=-2)


def tile_mlp(model, chunk_tokens: int) -> int:
    """Tiled MLP: every decoder layer's MLP runs over the sequence ``chunk_tokens`` tokens at a time, each chunk
    under its own (non-reentrant) ``torch.utils.checkpoint``; the chunk outputs are concatenated. Without
    gradients it is a plain loop over the chunks; sequences of at most ``chunk_tokens`` take the plain forward.

    Why: at long lengths the MLP's intermediates dominate one layer's forward/backward. A SwiGLU MLP holds gate,
    up and their product, T x intermediate_size each: on the Llama-3.1-8B shape at 512k tokens that is 86 GB in
    bf16 while the layer is recomputed and differentiated, more than everything else of the step. Per chunk only
    one chunk's intermediates are alive; the cost is one extra MLP forward per chunk (the recompute), and with
    ``gradient_checkpointing`` the chunk checkpoints nest inside the layer's. This is ALST's "TiledMLP"
    (Arctic Long Sequence Training, arXiv 2506.13996). Liger's ``apply_tiled_mlp`` does the same with a custom
    autograd Function, but importing liger needs triton (a GPU); PyTorch's checkpoint per chunk needs nothing.

    Wraps the forward of whatever module ``layer.mlp`` is when called (transformers' MLP, Liger's SwiGLU, with
    PEFT LoRA layers inside before or after: the MLP looks its projections up by attribute), by an instance
    attribute ``forward``; calling again re-tiles with the new chunk size. Returns the number of MLPs wrapped.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    layers = _decoder_layers(model, "tile_mlp")
    for layer in layers:
        mlp = layer.mlp
        own = mlp.__dict__.get("forward")
        if isinstance(own, functools.partial) and own.func is _tiled_mlp_forward:
            original = own.args[0]  # already tiled: re-tile the original forward
        else:
            original = mlp.forward
        mlp.forward = functools.partial(_tiled_mlp_forward, original, chunk_tokens)
    return len(layers)


def _offloaded_checkpoint(checkpoint_func, function, *args, **kwargs):
    """``checkpoint_func`` (a layer's checkpoint function) with the tensors it saves for the backward pass,
    its positional inputs, kept in host memory (pinned when CUDA is there)."""
    with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
        return checkpoint_func(function, *args, **kwargs)


def offload_checkpoints(model, layers: int) -> int:
    """The first ``layers`` decoder layers keep their checkpointed input in host memory, not GPU memory, until
    the backward pass needs it. Those layers must be checkpointed (transformers' ``gradient_checkpointing_enable``
    / ``activation_checkpointing_enable`` first, and not made plain by :func:`keep_activations`).

    Memory: a checkpointed layer keeps only its input hidden states, T x hidden x 2 bytes in bf16, but for the
    whole forward pass: 4 GiB per layer on the Llama-3.1-8B shape at 512k tokens, 128 GiB for its 32 layers,
    most of a 141 GB GPU. Offloaded, that goes to host memory. Cost per offloaded layer: one device-to-host copy
    in the forward and one host-to-device copy in the backward (from pinned host memory, so the copies are
    asynchronous DMA), and the pinned host memory itself (T x hidden x 2 bytes a layer). The first layers are
    the ones to offload: their inputs wait longest for the backward pass, the last layers' are needed soon.

    How: each layer's ``_gradient_checkpointing_func`` (which transformers calls as
    ``func(partial(forward, layer, **kwargs), *args)``, from ``__call__`` in 5.17 and from ``forward`` in 5.2x)
    is wrapped to run under ``torch.autograd.graph.save_on_cpu``. Non-reentrant checkpointing saves the
    checkpoint's positional tensor inputs as autograd saved tensors under whatever saved-tensor hooks are active
    at the call (torch 2.13: ``_CheckpointFrame.save_inputs``; earlier: ``_NoopSaveInputs``'s
    ``save_for_backward``), while everything saved inside the checkpointed region goes to the checkpoint's own
    hooks. Llama-style layers take only ``hidden_states`` positionally, so the rotary cos/sin and masks
    (keyword arguments) are not copied. Calling ``gradient_checkpointing_enable`` again undoes this.
    Returns the number of layers wrapped.
    """
    if layers < 0:
        raise ValueError(f"offload_checkpoints: layers must be >= 0, got {layers}")
    all_layers = _decoder_layers(model, "offload_checkpoints")
    if layers > len(all_layers):
        raise ValueError(f"offload_checkpoints: {layers} exceeds the model's {len(all_layers)} decoder layers")
    wrappers = {}
    for i, layer in enumerate(all_layers[:layers]):
        func = getattr(layer, "_gradient_checkpointing_func", None)
        if not getattr(layer, "gradient_checkpointing", False) or func is None:
            raise RuntimeError(f"offload_checkpoints: decoder layer {i} is not checkpointed (enable gradient "
                               "checkpointing first; layers kept plain by keep_activations cannot be offloaded)")
        if isinstance(func, functools.partial) and func.func is _offloaded_checkpoint:
            continue  # already offloaded
        # one wrapper per distinct checkpoint function (transformers gives every layer the same one): compiled
        # layers (train.compile) guard on this object, and one per layer would recompile for every layer
        key = id(func)
        if key not in wrappers:
            wrappers[key] = functools.partial(_offloaded_checkpoint, func)
        layer._gradient_checkpointing_func = wrappers[key]
    return layers
