"""Real scale on one GPU: this project's setups against the plain baseline, same shape, same run (issue 14).

Random bf16 weights of a real shape (``longctx.shapes``; speed and memory do not depend on weight values).
Parts (``--parts``, comma-separated), each printing one JSON line per measurement and appending it to ``--out``:

- ``lora``: LoRA r=16 on all linear layers, batch 1, one optimizer step per timed step, at ``--lora-lengths``.
  * ``baseline``: exactly ``shared/measurements/baseline_8b.py``: transformers + PEFT (adapters float32, PEFT's
    default), bf16 frozen weights, SDPA in PyTorch's default order, AdamW, gradient checkpointing on every
    layer (non-reentrant), the model's own loss over full logits.
  * ``ours``: ``longctx.training.trainable.trainable_model`` (the finetune stage's setup) with Liger RMSNorm/SwiGLU, the fused
    linear cross-entropy (``LossFn(fused=True, liger=True)``), SDPA on cuDNN attention, bf16 autocast over
    float32 LoRA adapters (PEFT's input up-cast switched off, so no float32 copies of activations), and
    *partial* checkpointing: the last ``n`` decoder layers keep all their activations, the others use
    selective checkpointing (everything recomputed but the attention kernel). ``n`` is the largest of
    ``--plain-layers`` that fits at that length (tried in order; an out-of-memory try moves to the next).
- ``prefill``: one forward (last-token logits, no cache) at ``--prefill-lengths`` for the plain model (baseline:
  the published config, SDPA) and for methods none / yarn / entropy_abf / selfextend built by
  ``longctx.methods.build_extension`` for ``--target`` tokens and applied with ``longctx.modeling.extend_model``.
  Rows give ``ratio_vs_plain`` (tokens/s over the plain model's). Before SelfExtend's rows, a ``check`` row per
  causal kernel of its prefill path: error against the CPU path, and ms per attention call against plain SDPA at
  the longest length. ``--profile-prefill T``: the top device ops of one SelfExtend forward at ``T`` (also written
  next to ``--out`` as ``*.selfextend_profile.txt``).
- ``decode``: greedy decode tokens/s through ``generate`` after a ``--decode-prefill`` token prompt, plain vs
  SelfExtend, with a dynamic cache (eager) and a static one (``generate`` compiles the step into a CUDA graph);
  ``ratio_vs_plain`` in the JSON.
- ``maxlen``: the longest LoRA sequence: ours with checkpointing on every layer (``--maxlen-ckpt``) at
  ``--maxlen-lengths`` (one step each, the first timed), and the same setup on a ONE-layer model of the same
  widths at ``--layer-lengths``; ``predict`` in the JSON gives the 32-layer peak derived from it.
- ``longest``: the longest LoRA sequence with a tiled MLP and checkpointed inputs in host memory (ALST's remedies,
  ``train.mlp_chunk_tokens`` / ``train.offload_checkpoints``) at ``--longest-length``: a two-layer run sizes the
  number of offloaded layers, then the full model runs one step (see :func:`part_longest`).
- ``full1b``: full fine-tuning of ``--full-shape``: baseline (bf16 weights and AdamW states, checkpointing on,
  model's own loss) against ours (``trainable_model`` mode full: float32 master weights under bf16 autocast,
  selective checkpointing, Liger, fused CE, cuDNN) at ``--full-lengths``.

MFU: model FLOPs 6*N*T + 6*L*h*T^2 per training step (2*N*T + 2*L*h*T^2 per forward), N non-embedding
parameters, LoRA credited as full, recomputation not counted (the baseline script's convention), against
790 TFLOP/s (the H200's measured dense bf16 matmul rate on random data).

Usage (GPU host): python benchmarks/scale_8b.py --parts lora,prefill,decode --out $OUT/scale.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from longctx import shapes  # noqa: E402

PEAK = 790e12
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OUT = None
DEVICE = "cuda"  # "cpu" only for --smoke (the tiny shape, to check the script without a GPU)


def emit(**row):
    print(json.dumps(row), flush=True)
    if OUT:
        with open(OUT, "a") as f:
            f.write(json.dumps(row) + "\n")


def gib(x: int) -> float:
    return round(x / 2**30, 1)


def non_embedding(cfg, embeddings: bool = False) -> int:
    """Parameters of a model of ``cfg`` without the embedding and lm_head weights (``embeddings=True``: all)."""
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        m = AutoModelForCausalLM.from_config(cfg)
    skip = set() if embeddings else {id(p) for p in (m.get_input_embeddings().weight, m.get_output_embeddings().weight)}
    return sum(p.numel() for p in m.parameters() if id(p) not in skip)


def train_flops(cfg, n, T):
    return 6 * n * T + 6 * cfg.num_hidden_layers * cfg.hidden_size * T * T


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak():
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak() -> int:
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0


def free():
    import gc

    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def ids_of(cfg, T, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (1, T), device=DEVICE, generator=g)


def time_steps(step, T, warmup, repeats):
    """Seconds per step (after ``warmup`` steps; the peak memory covers all of them)."""
    reset_peak()
    for _ in range(warmup):
        step(T)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step(T)
    sync()
    return (time.perf_counter() - t0) / repeats, peak()


# --------------------------------------------------------------------------------------------- setups

def baseline_lora(cfg):
    """shared/measurements/baseline_8b.py's training setup, verbatim."""
    from peft import LoraConfig, get_peft_model

    model = shapes.random_model(cfg, DEVICE, torch.bfloat16, attn_implementation="sdpa")
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    lm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-4)
    return _plain_step(lm, opt, cfg)


def _plain_step(model, opt, cfg):
    """The baseline's training step, as written by hand: the model's own loss over full logits, AdamW."""

    def step(T):
        ids = ids_of(cfg, T)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.model = model
    return step


def baseline_full(cfg):
    """The same hand-written loop for full fine-tuning: bf16 weights and AdamW states, checkpointing on."""
    model = shapes.random_model(cfg, DEVICE, torch.bfloat16, attn_implementation="sdpa")
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    return _plain_step(model, opt, cfg)


LIGER, BACKEND = [True], ["cudnn"]  # set from the command line


def ours(cfg, mode="lora", ckpt="selective", plain_layers=0, mlp_chunk_tokens=0, offload_checkpoints=0):
    """The finetune stage's setup (``longctx.training.trainable.trainable_model`` + ``LossFn``) on a random model of
    ``cfg``; ``mlp_chunk_tokens`` / ``offload_checkpoints`` are the ``train`` keys of the same names."""
    from longctx.kernels import sdpa_backend
    from longctx.params import TrainParams, build
    from longctx.training.loss import LossFn
    from longctx.training.trainable import load_dtype, trainable_model

    liger, backend = LIGER[0], BACKEND[0]
    tp = build(TrainParams, {"mode": mode, "lr": 1e-4, "gradient_checkpointing": ckpt, "fused_ce": True,
                             "liger": liger, "sdpa_backend": backend,
                             "keep_activations": plain_layers if ckpt != "none" else 0,
                             "mlp_chunk_tokens": mlp_chunk_tokens, "offload_checkpoints": offload_checkpoints,
                             "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": TARGETS}}, "ours")
    # As the finetune stage under bf16 autocast: LoRA's frozen weights in bf16, float32 adapters without PEFT's
    # float32 input cast; full: float32 master weights.
    dtype = getattr(torch, load_dtype(tp, "auto", autocast_bf16=True))
    model = shapes.random_model(cfg, DEVICE, dtype, attn_implementation="sdpa")
    model, _, opt = trainable_model(model, tp, autocast_bf16=True)
    loss_fn = LossFn(model, fused=True, liger=liger)

    def step(T):
        ids = ids_of(cfg, T)
        batch = {"input_ids": ids, "labels": ids, "use_cache": False}
        with sdpa_backend(backend):
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                loss = loss_fn(model, batch)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.model = model
    return step


# --------------------------------------------------------------------------------------------- parts

def part_lora(args, cfg, n):
    for T in args.lora_lengths:
        for setup in ("baseline", "ours"):
            tries = [None] if setup == "baseline" else args.plain_layers
            for plain in tries:
                free()
                step = None
                try:
                    step = baseline_lora(cfg) if setup == "baseline" else ours(cfg, plain_layers=plain)
                    s, peak = time_steps(step, T, 1, args.repeats)
                    emit(part="lora", setup=setup, length=T, plain_layers=plain, s_per_step=round(s, 3),
                         tok_s=round(T / s), mfu=round(train_flops(cfg, n, T) / s / PEAK, 3), peak_gib=gib(peak))
                    if args.profile_lora and T == args.lora_lengths[-1]:
                        profile_step(step, T, f"{setup} LoRA")
                    break
                except Exception as e:  # noqa: BLE001
                    if not is_oom(e):
                        raise
                    emit(part="lora", setup=setup, length=T, plain_layers=plain, result="oom")
                finally:
                    del step
                    free()


    if DEVICE == "cuda":  # which kernel SDPA runs for this shape (probed after the steps, see train_throughput)
        from train_throughput import attention_kernel

        for backend in ("auto", BACKEND[0]):
            emit(part="lora", sdpa_backend=backend, attention_kernel=attention_kernel(backend, cfg))


def profile_step(step, T, label):
    """One profiled step: the top device ops, the line RESULTS quotes for what limits a row."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA if DEVICE == "cuda" else ProfilerActivity.CPU]) as prof:
        step(T)
        sync()
    events = prof.key_averages()
    total = sum(e.self_device_time_total for e in events) / 1e6
    text = (f"profile {label} at {T}: device busy {total:.3f} s\n"
            + events.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=70))
    print(text)
    return text


def _extension(method, cfg, target):
    """The method's extension of the shape's published config (``cfg`` itself, never the extended model's)."""
    from longctx.base_model import native_window, rope_theta
    from longctx.methods import build_extension
    from longctx.modeling import head_dim

    return build_extension(method, {}, target, native_window(cfg), rope_theta(cfg), head_dim(cfg))


@torch.inference_mode()
def forward_time(model, ids, warm_ids=None):
    if warm_ids is not None:
        model(input_ids=warm_ids, logits_to_keep=1, use_cache=False)
    sync()
    reset_peak()
    t0 = time.perf_counter()
    model(input_ids=ids, logits_to_keep=1, use_cache=False)
    sync()
    return time.perf_counter() - t0, peak()


def part_prefill(args, cfg, n):
    from longctx.modeling import extend_model

    model = shapes.random_model(copy.deepcopy(cfg), DEVICE, torch.bfloat16, attn_implementation="sdpa")
    warm = ids_of(cfg, 4096)
    plain = {}  # tokens/s of the plain model per length: the other rows' ratio_vs_plain
    for method in ["plain"] + args.methods:
        if method != "plain":
            extension = _extension(method, cfg, args.target)
            extend_model(model, extension)
            if method == "selfextend":
                selfextend_attention_check(cfg, extension, max(args.prefill_lengths))
        for i, T in enumerate(args.prefill_lengths):
            free()
            try:
                s, peak = forward_time(model, ids_of(cfg, T), warm if i == 0 else None)
                if i == 0 or method == "selfextend":  # again, after compilation (FlexAttention, per shape)
                    s, peak = forward_time(model, ids_of(cfg, T))
                f = 2 * n * T + 2 * cfg.num_hidden_layers * cfg.hidden_size * T * T
                if method == "plain":
                    plain[T] = T / s
                emit(part="prefill", method=method, length=T, s=round(s, 3), tok_s=round(T / s),
                     ratio_vs_plain=round(T / s / plain[T], 3) if T in plain else None,
                     mfu=round(f / s / PEAK, 3), peak_gib=gib(peak))
            except Exception as e:  # noqa: BLE001
                if not is_oom(e):
                    raise
                emit(part="prefill", method=method, length=T, result="oom")
            if method == "selfextend" and T == args.profile_prefill:
                text = profile_step(lambda T: forward_time(model, ids_of(cfg, T)), T, "selfextend prefill")
                if OUT:
                    Path(OUT).with_suffix(".selfextend_profile.txt").write_text(text)
    del model
    free()


@torch.inference_mode()
def selfextend_attention_check(cfg, extension, T):
    """SelfExtend's attention alone on one layer's shapes (random q/k/v, bf16), for each causal kernel of its
    prefill path (``longctx.selfextend.PREFILL_KERNELS``):

    - error: the prefill path at 3 windows' length against the same call on the CPU (float32, the blockwise
      path that the tests hold to a float64 reference); ``sdpa_err`` is plain causal SDPA's bf16-vs-CPU error,
      the scale of bf16 rounding. An error far above it means the kernel's lse is not what the merge expects.
    - time: ms per call at ``T`` against plain causal SDPA (``enable_gqa``, PyTorch's default kernel order).
    - ``g1_err``: at ``T``, SelfExtend with ``group_size`` 1 (grouped positions = true positions) IS plain causal
      attention; its distance from plain SDPA checks the slicing, the band and the lse merge at the real length.
    """
    from types import SimpleNamespace

    import torch.nn.functional as F

    from longctx import selfextend
    from longctx.modeling import head_dim

    d, h_q, h_kv = head_dim(cfg), cfg.num_attention_heads, cfg.num_key_value_heads
    module = SimpleNamespace(config=SimpleNamespace(longctx_extension=extension.attention,
                                                    rope_parameters=extension.rope_parameters), training=False)
    window = extension.attention["window"]

    def qkv(length, seed=0):
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        return [torch.randn(1, h, length, d, device=DEVICE, generator=g, dtype=torch.bfloat16)
                for h in (h_q, h_kv, h_kv)]

    def selfextend_call(q, k, v, module=module):
        pos = torch.arange(q.shape[2], device=q.device)[None]
        return selfextend.selfextend_attention(module, q, k, v, None, position_ids=pos)[0]

    ungrouped = copy.deepcopy(module)
    ungrouped.config.longctx_extension = {**extension.attention, "group_size": 1}

    def plain_call(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    n = 3 * window
    q, k, v = qkv(n)
    cpu = [x.float().cpu() for x in (q, k, v)]
    ref = selfextend_call(*cpu)
    sdpa_err = (plain_call(q, k, v).float().cpu() - plain_call(*cpu)).abs().max().item()

    def ms_per_call(call, q, k, v, repeats=3):
        call(q, k, v)
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            call(q, k, v)
        sync()
        return round(1000 * (time.perf_counter() - t0) / repeats, 2)

    big = qkv(T, seed=1)
    plain_ms = ms_per_call(plain_call, *big)
    plain_big = plain_call(*big).transpose(1, 2)  # (b, T, h, d) like the attention function's output
    default = selfextend.PREFILL_KERNEL
    for kernel in selfextend.PREFILL_KERNELS:
        selfextend.PREFILL_KERNEL = kernel
        err = (selfextend_call(q, k, v).float().cpu() - ref).abs().max().item()
        ms = ms_per_call(selfextend_call, *big)
        g1_err = (selfextend_call(*big, module=ungrouped).float() - plain_big.float()).abs().max().item()
        emit(part="prefill", check="selfextend_attention", kernel=kernel, err_length=n, max_abs_err=round(err, 5),
             sdpa_err=round(sdpa_err, 5), ref_max_abs=round(ref.abs().max().item(), 4), length=T,
             g1_err=round(g1_err, 5), plain_sdpa_ms=plain_ms, selfextend_ms=ms,
             ratio_vs_plain=round(plain_ms / ms, 3))
    selfextend.PREFILL_KERNEL = default
    free()


def _flex_decode_attention(rows, key, value, mask, scaling):
    """Candidate for ``selfextend._decode_attention``: FlexAttention's decoding kernel (split over the keys, GQA
    without repeating the KV heads), the mask as a score_mod. Fast only compiled (the static cache's step)."""
    from torch.nn.attention.flex_attention import flex_attention

    b, h_kv, g, d = rows.shape
    score_mod = None
    if mask is not None:
        visible = mask[:, 0, 0, :]

        def score_mod(score, bi, h, qi, kj):
            return torch.where(visible[bi, kj], score, float("-inf"))

    out = flex_attention(rows.reshape(b, h_kv * g, 1, d), key, value, score_mod=score_mod, scale=scaling,
                         enable_gqa=True)
    return out.reshape(b, h_kv, g, d)


def _sdpa_decode_attention(rows, key, value, mask, scaling):
    """The package's ``selfextend._decode_attention`` until the twelfth run: one fused SDPA call with the g query
    heads of a KV head as rows (cuDNN picks it with a mask; 662 us a layer at 32k on an H200, too few blocks)."""
    return torch.nn.functional.scaled_dot_product_attention(rows, key, value, attn_mask=mask, scale=scaling)


DECODE_ATTENTION = {"package": None, "sdpa": _sdpa_decode_attention, "flex": _flex_decode_attention}


def _decode_attention_check(variant, cfg, kv_len):
    """Largest error of a ``_decode_attention`` candidate against the package's on random bf16 data of the
    shape's heads, with the last 16 slots masked like a static cache's empty ones."""
    from longctx import selfextend

    g = torch.Generator(device=DEVICE).manual_seed(0)
    h_kv, d = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    groups = cfg.num_attention_heads // h_kv

    def rand(*shape):
        return torch.randn(*shape, generator=g, device=DEVICE, dtype=torch.bfloat16)

    rows, k, v = rand(1, h_kv, groups, d), rand(1, h_kv, kv_len, d), rand(1, h_kv, kv_len, d)
    mask = torch.ones(1, 1, 1, kv_len, dtype=torch.bool, device=DEVICE)
    mask[..., -16:] = False
    ref = selfextend._decode_attention(rows, k, v, mask, d**-0.5).float()
    candidate = DECODE_ATTENTION[variant]
    got = (torch.compile(candidate) if DEVICE == "cuda" else candidate)(rows, k, v, mask, d**-0.5).float()
    return (got - ref).abs().max().item()


def _generate_s(model, ids, new_tokens, cache_implementation):
    """Seconds of one greedy ``generate`` call of exactly ``new_tokens`` tokens (prefill included)."""
    sync()
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   cache_implementation=cache_implementation, pad_token_id=0)
    sync()
    return time.perf_counter() - t0


@torch.inference_mode()
def part_decode(args, cfg, n):
    """Greedy decoding after a ``--decode-prefill`` prompt, plain (``none``) and SelfExtend, through ``generate`` as a
    user calls it, per cache in ``--decode-caches``:

    - ``dynamic``: transformers' default cache, eager, once per SDPA backend of ``--decode-backends``;
    - ``static``: ``cache_implementation="static"``, for which ``generate`` compiles the decoding forward with its
      default ``CompileConfig`` (inductor, ``reduce-overhead``: the step is replayed as a CUDA graph).

    Per-token time = (a call of ``--decode-tokens`` + 2 tokens - a call of 2 tokens) / ``--decode-tokens``: the
    prefill and the first token cancel. The first call (compile and capture, for ``static``) is ``first_call_s``.
    ``ratio_vs_plain``: SelfExtend's tokens/s over plain's with the same cache (and backend);
    ``ratio_vs_plain_dynamic``: over plain's fastest dynamic-cache row (what plain ``generate()`` gives).
    """
    from longctx import selfextend

    model = shapes.random_model(copy.deepcopy(cfg), DEVICE, torch.bfloat16, attn_implementation="sdpa")
    package_attention = selfextend._decode_attention
    try:
        _decode_runs(args, cfg, model, package_attention)
    finally:  # the candidates are swapped into the package: put its own back whatever happened
        selfextend._decode_attention = package_attention
    del model
    free()


def _decode_runs(args, cfg, model, package_attention):
    """The rows of :func:`part_decode`: plain, then SelfExtend with each ``--decode-attention`` (``package``:
    ``package_attention``, the package's own), per cache setting."""
    from longctx import selfextend
    from longctx.kernels import sdpa_backend
    from longctx.modeling import extend_model

    ids = ids_of(cfg, args.decode_prefill)
    plain = {}
    settings = [(c, b) for c in args.decode_caches for b in (args.decode_backends if c == "dynamic" else ["auto"])]
    runs = [("none", "package")] + [("selfextend", a) for a in args.decode_attention]
    for method, attention in runs:
        extend_model(model, _extension(method, cfg, args.target))
        if attention != "package":
            emit(part="decode", check="decode_attention", attention=attention, kv_len=args.decode_prefill,
                 max_abs_err_vs_package=round(_decode_attention_check(attention, cfg, args.decode_prefill), 5))
        selfextend._decode_attention = DECODE_ATTENTION[attention] or package_attention
        torch._dynamo.reset()  # the attention function changed: compile the static step afresh
        free()
        for cache, backend in settings:
            if attention == "flex" and cache == "dynamic":
                continue  # flex is fast only compiled; the dynamic cache's step runs eagerly
            impl = "static" if cache == "static" else None
            row = dict(part="decode", method=method, cache=cache, sdpa_backend=backend, prefill=args.decode_prefill,
                       tokens=args.decode_tokens)
            if method == "selfextend":
                row["decode_attention"] = attention
            try:
                with sdpa_backend(backend):
                    first = _generate_s(model, ids, args.decode_tokens + 2, impl)
                    short = _generate_s(model, ids, 2, impl)
                    long = _generate_s(model, ids, args.decode_tokens + 2, impl)
            except Exception as e:  # noqa: BLE001 -- one failed setting must not lose the others
                emit(**row, result=f"error: {type(e).__name__}: {str(e)[:300]}")
                free()
                continue
            s = max(long - short, 1e-9) / args.decode_tokens
            row.update(decode_tok_s=round(1 / s, 1), ms_per_token=round(1000 * s, 2), first_call_s=round(first, 2),
                       two_token_call_s=round(short, 2), peak_gib=gib(peak()))
            if method == "none":
                plain[(cache, backend)] = 1 / s
            else:
                if (cache, backend) in plain:
                    row["ratio_vs_plain"] = round(1 / s / plain[(cache, backend)], 3)
                dyn = [v for (c, _), v in plain.items() if c == "dynamic"]
                if dyn:
                    row["ratio_vs_plain_dynamic"] = round(1 / s / max(dyn), 3)
            emit(**row)
            if args.profile_decode:  # where the time of a warm call goes (its decode kernels run tokens + 1 times)
                try:
                    with sdpa_backend(backend):
                        _profile_generate(model, ids, args.decode_tokens + 2, impl,
                                          f"{method} {cache} ({backend}, decode attention {attention})")
                except Exception as e:  # noqa: BLE001 -- a profiler failure must not lose the other settings
                    print(f"profile failed: {type(e).__name__}: {str(e)[:300]}")
            free()


def _profile_generate(model, ids, new_tokens, cache_implementation, label):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=acts) as prof:
        _generate_s(model, ids, new_tokens, cache_implementation)
    ev = prof.key_averages()
    print(f"profile decode {label}: one generate() call of {new_tokens} tokens (prefill included)")
    print(ev.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=70))
    print(ev.table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=70))


def _one_step(name, make, T, part, n, cfg, warmup=0, repeats=1, **extra):
    free()
    step = None
    try:
        step = make()
        s, peak = time_steps(step, T, warmup, repeats)
        emit(part=part, setup=name, length=T, s_per_step=round(s, 3), tok_s=round(T / s),
             mfu=round(train_flops(cfg, n, T) / s / PEAK, 3), peak_gib=gib(peak), warm=warmup > 0, **extra)
        return peak
    except Exception as e:  # noqa: BLE001
        if not is_oom(e):
            raise
        emit(part=part, setup=name, length=T, result="oom", **extra)
        return None
    finally:
        del step
        free()


def part_maxlen(args, cfg, n):
    for spec in args.maxlen_lengths.split(","):  # length:checkpointing:plain_layers
        T, ckpt, plain = spec.split(":")
        T, plain = int(T), int(plain)
        _one_step(f"ours_lora_{ckpt}", lambda: ours(cfg, ckpt=ckpt, plain_layers=plain), T, "maxlen", n, cfg,
                  plain_layers=plain)
    ckpt = args.maxlen_ckpt
    one = shapes.shape_config(args.shape, num_hidden_layers=1)
    for T in args.layer_lengths:
        peak = _one_step(f"ours_lora_{ckpt}_1layer", lambda: ours(one, ckpt=ckpt), T, "maxlen", n, one)
        if peak is not None:
            # 32 layers: the one-layer peak, plus the other layers' bf16 weights, plus what each checkpointed
            # layer keeps until the backward pass (its input, T x hidden bf16)
            per_layer_w = (non_embedding(cfg) - non_embedding(one)) / (cfg.num_hidden_layers - 1) * 2
            keep = T * cfg.hidden_size * 2
            predict = peak + (cfg.num_hidden_layers - 1) * (per_layer_w + keep)
            emit(part="maxlen", setup=f"ours_lora_{ckpt}_predicted_{cfg.num_hidden_layers}layers", length=T,
                 predicted_peak_gib=gib(predict), one_layer_peak_gib=gib(peak),
                 kept_per_layer_gib=gib(keep), fits_141gb=predict < 139 * 2**30, fits_80gb=predict < 79 * 2**30)


def host_available() -> int:
    """Bytes of host memory available now (/proc/meminfo MemAvailable)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def part_longest(args, cfg, n):
    """The longest LoRA sequence with ALST's two memory remedies (arXiv 2506.13996), as ``train`` keys of the finetune
    stage: the MLP in sequence chunks of ``--mlp-chunk-tokens`` (``train.mlp_chunk_tokens``) and the inputs of the
    first ``k`` checkpointed layers kept in pinned host memory (``train.offload_checkpoints``); full checkpointing.

    1. A two-layer model of the same widths, both layers offloaded, runs one step at ``--sizing-length`` (a quarter of
       the length by default: nothing of this setup grows faster than the length, so the working set scales): its
       peak less the two layers' weights is one layer's backward working set, scaled to the length.
    2. ``k`` is the fewest offloaded layers for which the full model's predicted peak (the weights, that working
       set, and the T x hidden bf16 input of each layer left on the GPU) fits the free GPU memory less
       ``--gpu-margin-gib``; the offloaded inputs must fit the host's available memory less 16 GiB.
    3. The full model runs one (cold) step with that ``k``: measured peak, host memory, time.
    """
    import resource

    T, chunk, L = args.longest_length, args.mlp_chunk_tokens, cfg.num_hidden_layers
    sizing = args.sizing_length or T // 4
    two = shapes.shape_config(args.shape, num_hidden_layers=2)
    p2 = _one_step("ours_lora_full_tiled_offload_2layers",
                   lambda: ours(two, ckpt="full", mlp_chunk_tokens=chunk, offload_checkpoints=2), sizing, "longest",
                   non_embedding(two), two, mlp_chunk_tokens=chunk, offload_checkpoints=2)
    if p2 is None:
        return
    keep = T * cfg.hidden_size * 2
    weights = non_embedding(cfg, embeddings=True) * 2  # bf16
    working = (p2 - non_embedding(two, embeddings=True) * 2) * T / sizing
    base = weights + working
    free()
    budget = torch.cuda.mem_get_info()[0] - args.gpu_margin_gib * 2**30 if DEVICE == "cuda" else 2**50
    fit_on_gpu = max(0, min(L, int((budget - base) // keep)))  # layer inputs that fit beside the rest
    k = L - fit_on_gpu if args.offload_checkpoints < 0 else min(args.offload_checkpoints, L)
    host = host_available() - 16 * 2**30
    plan = dict(part="longest", setup="plan", length=T, sizing_length=sizing, two_layer_peak_gib=gib(p2),
                working_set_gib=gib(working), weights_gib=gib(weights), kept_per_layer_gib=gib(keep),
                gpu_budget_gib=gib(budget), offload_checkpoints=k, host_needed_gib=gib(k * keep),
                host_available_gib=gib(host), predicted_peak_gib=gib(base + (L - k) * keep))
    if k * keep > host:
        emit(**plan, result="does not fit: the offloaded inputs exceed the host memory")
        return
    emit(**plan)
    _one_step("ours_lora_full_tiled_offload", lambda: ours(cfg, ckpt="full", mlp_chunk_tokens=chunk,
                                                           offload_checkpoints=k), T, "longest", n, cfg,
              mlp_chunk_tokens=chunk, offload_checkpoints=k)
    emit(part="longest", setup="host", length=T, host_max_rss_gib=gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def part_full1b(args, _cfg, _n):
    cfg = shapes.shape_config(args.full_shape)
    n = non_embedding(cfg)
    for T in args.full_lengths:
        long = T > 131072
        _one_step("baseline_full", lambda: baseline_full(cfg), T, "full1b", n, cfg,
                  warmup=0 if long else 1, repeats=1 if long else args.repeats, shape=args.full_shape)
        _one_step("ours_full", lambda: ours(cfg, mode="full", plain_layers=args.full_plain_layers), T, "full1b", n,
                  cfg, warmup=0 if long else 1, repeats=1 if long else args.repeats, shape=args.full_shape,
                  plain_layers=args.full_plain_layers)


def ints(s):
    return [int(x) for x in s.split(",") if x]


def main():
    global OUT, DEVICE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama3.1-8b")
    ap.add_argument("--parts", default="lora,prefill,decode")
    ap.add_argument("--lora-lengths", type=ints, default=ints("16384,32768"))
    ap.add_argument("--plain-layers", type=ints, default=ints("32,20,16,12,8,0"),
                    help="decoder layers without checkpointing, tried in order until one fits")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prefill-lengths", type=ints, default=ints("32768,65536,131072"))
    ap.add_argument("--methods", default="none,yarn,entropy_abf,selfextend")
    ap.add_argument("--target", type=int, default=131072, help="extension target length of the methods")
    ap.add_argument("--profile-prefill", type=int, default=0,
                    help="profile one SelfExtend prefill forward at this length (one of --prefill-lengths)")
    ap.add_argument("--decode-prefill", type=int, default=32768)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--decode-backends", default="auto,flash",
                    help="SDPA backends tried first with the dynamic cache, each measured (comma-separated)")
    ap.add_argument("--decode-caches", default="dynamic,static",
                    help="KV caches measured in the decode part: dynamic (eager), static (generate compiles the step)")
    ap.add_argument("--decode-attention", default="package",
                    help="SelfExtend decode-step attentions measured, comma-separated: package (selfextend's own), "
                         "sdpa (the fused SDPA it replaced), flex (FlexAttention; static cache only)")
    ap.add_argument("--profile-decode", action="store_true")
    ap.add_argument("--profile-lora", action="store_true", help="profile one step of each setup at the last length")
    ap.add_argument("--maxlen-ckpt", default="full")
    ap.add_argument("--maxlen-lengths", default="65536:selective:8,131072:full:0",
                    help="length:gradient_checkpointing:plain_layers, comma-separated (one untimed-warm-up step each)")
    ap.add_argument("--layer-lengths", type=ints, default=ints("262144,524288"))
    ap.add_argument("--longest-length", type=int, default=524288)
    ap.add_argument("--sizing-length", type=int, default=0, help="length of the longest part's two-layer sizing run "
                    "(default a quarter of --longest-length)")
    ap.add_argument("--mlp-chunk-tokens", type=int, default=32768, help="train.mlp_chunk_tokens of the longest part")
    ap.add_argument("--gpu-margin-gib", type=float, default=16.0,
                    help="GPU memory the longest part leaves free when it chooses how many layers to offload (the "
                         "eleventh run's 512k step ran out of memory with a 12 GiB margin: predicted 126.2 of 126.9)")
    ap.add_argument("--offload-checkpoints", type=int, default=-1,
                    help="layers the longest part offloads (-1: planned from the two-layer run)")
    ap.add_argument("--full-shape", default="llama3.2-1b")
    ap.add_argument("--full-lengths", type=ints, default=ints("32768,131072"))
    ap.add_argument("--full-plain-layers", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--backend", default="cudnn", help="SDPA backend of ours (longctx.kernels.SDPA_BACKENDS)")
    ap.add_argument("--no-liger", dest="liger", action="store_false")
    ap.add_argument("--smoke", action="store_true", help="tiny shape on the CPU: checks the script, measures nothing")
    args = ap.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    args.decode_backends = [b for b in args.decode_backends.split(",") if b]
    args.decode_caches = [c for c in args.decode_caches.split(",") if c]
    args.decode_attention = [a for a in args.decode_attention.split(",") if a]
    bad = [a for a in args.decode_attention if a not in DECODE_ATTENTION]
    if bad:
        sys.exit(f"--decode-attention: {bad} not allowed; allowed: {', '.join(DECODE_ATTENTION)}")
    bad = [c for c in args.decode_caches if c not in ("dynamic", "static")]
    if bad:
        sys.exit(f"--decode-caches: {bad} not allowed; allowed: dynamic, static")
    OUT = args.out
    if args.smoke:  # the script's logic on the CPU: tiny shapes, no Triton/cuDNN kernels
        DEVICE, args.shape, args.full_shape, args.liger, args.backend = "cpu", "tiny", "tiny", False, "auto"
        args.target = 8192
    elif not torch.cuda.is_available():
        sys.exit("scale_8b: needs a CUDA GPU (or --smoke)")
    LIGER[0], BACKEND[0] = args.liger, args.backend
    import peft
    import transformers

    cfg = shapes.shape_config(args.shape)
    n = non_embedding(cfg)
    emit(device=torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", torch=torch.__version__, transformers=transformers.__version__,
         peft=peft.__version__, shape=args.shape, non_embedding_params=n, command=" ".join(sys.argv),
         gpu_gib=gib(torch.cuda.get_device_properties(0).total_memory) if DEVICE == "cuda" else None)
    parts = {"lora": part_lora, "prefill": part_prefill, "decode": part_decode, "maxlen": part_maxlen,
             "longest": part_longest, "full1b": part_full1b}
    for p in args.parts.split(","):
        t0 = time.perf_counter()
        parts[p](args, cfg, n)
        emit(part=p, done_s=round(time.perf_counter() - t0, 1))


if __name__ == "__main__":
    main()
