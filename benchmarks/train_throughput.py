"""Training throughput, MFU and peak memory by sequence length: a plain baseline against this project's step.

Run on the GPU host from the repo root (no dvc/dvclive needed):

    python benchmarks/train_throughput.py --model models/base --lengths 8192,16384,32768,65536,131072 \
        --out $OUT/train_bench.json

Setups (each at every length, ascending, until it runs out of memory):
- ``baseline``: plain transformers model, bf16 weights, SDPA, AdamW, full fine-tuning, no gradient
  checkpointing, the model's own loss (full logits), batch 1.
- ``ours_*``: ``longctx.maxlen.build_step`` (the same setup as ``longctx.training.finetune``: float32 master
  weights under bf16 autocast) with the ``train`` keys in ``SETUPS``: ``ours_full`` / ``ours_lora`` are the
  fast setup (selective checkpointing, fused CE, Liger, SDPA on FlashAttention-4); ``ours_full_cudnn`` the
  same on cuDNN attention; ``ours_full_lowmem`` checkpoints every layer whole, for the longest lengths;
  ``ours_full_compiled*`` compile the decoder layers (``train.compile``) instead of Liger.
  ``--setup NAME=key=value,...`` adds one.

Above 131072 tokens a setup runs ``--long-warmup`` warm-up and ``--long-repeats`` timed steps (1 each).

MFU convention: model FLOPs per step = 6*N*T + 6*L*h*T^2 (N non-embedding parameters, L layers,
h hidden size, T tokens; causal attention counted once, i.e. half of the full T^2 score matrix;
recomputation by gradient checkpointing is not counted; LoRA is credited the same 6*N*T although it
skips the frozen weights' gradients) against 790 TFLOP/s dense bf16 peak (H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

PEAK_FLOPS = 790e12  # dense bf16, H100/H200 SXM
FORMULA = "FLOPs/step = 6*N*T + 6*L*h*T^2 (N non-embedding params, L layers, h hidden, T tokens; causal attention once)"


def train_flops_per_step(n_params: int, n_layers: int, hidden: int, tokens: int) -> float:
    """Model FLOPs of one training step (forward + backward) on ``tokens`` tokens (see module docstring)."""
    return 6.0 * n_params * tokens + 6.0 * n_layers * hidden * tokens ** 2


def non_embedding_params(model) -> int:
    """Parameters of the base model except input embeddings and the lm_head (counted once if tied)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    skip = {id(p) for m in (base.get_input_embeddings(), base.get_output_embeddings()) if m is not None
            for p in m.parameters()}
    return sum(p.numel() for n, p in base.named_parameters() if id(p) not in skip and "lora_" not in n)


def baseline_step(model_dir: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa",
                                                 trust_remote_code=False).cuda()
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)

    # Written out on purpose rather than taken from longctx.maxlen.build_step: the baseline is the loop a
    # user writes by hand, independent of this project's code.
    def step(length: int) -> float:
        ids = torch.randint(0, model.config.vocab_size, (1, length), generator=gen).cuda()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    step.model = model
    return step


# This project's setups: TrainParams keys. "ours_*" is what a user sets in params.yaml's train block.
FAST = "gradient_checkpointing=selective,fused_ce=true,liger=true,sdpa_backend=fa4"
SETUPS = {
    "baseline": None,  # the plain loop above
    "ours_full": f"mode=full,{FAST}",
    "ours_lora": f"mode=lora,{FAST}",
    "ours_full_cudnn": "mode=full,gradient_checkpointing=selective,fused_ce=true,liger=true,sdpa_backend=cudnn",
    "ours_full_nockpt": "mode=full,gradient_checkpointing=none,fused_ce=true,liger=true,sdpa_backend=fa4",
    "ours_full_compiled": "mode=full,gradient_checkpointing=none,fused_ce=true,sdpa_backend=fa4,compile=true",
    "ours_full_compiled_ckpt": "mode=full,gradient_checkpointing=full,fused_ce=true,sdpa_backend=fa4,compile=true",
    "ours_full_lowmem": "mode=full,gradient_checkpointing=full,fused_ce=true,liger=true,sdpa_backend=fa4",
}


def parse_setup(name: str, spec: str):
    """``key=value,...`` (TrainParams keys, YAML values) -> validated TrainParams."""
    import yaml

    from longctx.params import TrainParams, build

    kv = dict(item.split("=", 1) for item in spec.split(",") if item)
    return build(TrainParams, {"batch_size": 1, "lr": 1e-5, **{k: yaml.safe_load(v) for k, v in kv.items()}},
                 f"setup {name}")


def ours_step(model_dir: str, spec: str):
    from longctx.maxlen import build_step

    return build_step(model_dir, parse_setup("ours", spec), dtype="auto", device="cuda")


def make_step(name: str, model_dir: str):
    return baseline_step(model_dir) if SETUPS[name] is None else ours_step(model_dir, SETUPS[name])


def attention_kernel(backend: str, cfg) -> str:
    """The aten op SDPA runs for this model's attention shape (GQA, causal, bf16) under ``backend``."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from longctx.kernels import sdpa_backend

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "attention" in str(func):
                self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    hd = cfg.hidden_size // cfg.num_attention_heads
    q = torch.randn(1, cfg.num_attention_heads, 4096, hd, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, cfg.num_key_value_heads, 4096, hd, device="cuda", dtype=torch.bfloat16)
    mode = Ops()
    try:
        with sdpa_backend(backend):
            torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)  # first use
            with mode:
                torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
    except Exception as e:  # noqa: BLE001
        return f"error: {type(e).__name__}: {e}"[:200]
    return ",".join(dict.fromkeys(mode.seen)) + (" (FlashAttention-4)" if backend == "fa4" else "")


def profile_step(step, length: int) -> None:
    """One profiled step after a warm-up: where the time goes (host and device), top 12 ops each."""
    from torch.profiler import ProfilerActivity, profile

    step(length)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step(length)
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    cuda_total = sum(e.self_device_time_total for e in events) / 1e6
    print(f"profile at {length}: wall {wall:.3f} s (profiled), device busy {cuda_total:.3f} s")
    print(events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


def measure(step, length: int, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):  # allocator, kernel selection / JIT compilation, optimizer state
        step(length)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step(length)
    torch.cuda.synchronize()
    return {"seconds_per_step": (time.perf_counter() - t0) / repeats,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main():
    from longctx.maxlen import free_memory, is_oom

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--lengths", default="8192,16384,32768,65536,131072")
    ap.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, from {list(SETUPS)}")
    ap.add_argument("--setup", action="append", default=[], metavar="NAME=KEY=VALUE,...",
                    help="add a setup of TrainParams keys, e.g. mine=mode=full,gradient_checkpointing=full")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--long-repeats", type=int, default=1, help="timed steps above 131072 tokens")
    ap.add_argument("--long-warmup", type=int, default=1, help="warm-up steps above 131072 tokens")
    ap.add_argument("--out", default="train_bench.json")
    ap.add_argument("--profile", action="store_true",
                    help="print torch.profiler's top ops for one step of each setup at the first length")
    args = ap.parse_args()
    for extra in args.setup:
        name, spec = extra.split("=", 1)
        SETUPS[name] = spec
    names = args.setups.split(",") + [e.split("=", 1)[0] for e in args.setup]
    for name in names:
        if name not in SETUPS:
            sys.exit(f"train_throughput: unknown setup {name!r}; known: {', '.join(SETUPS)}")
        if SETUPS[name] is not None:
            parse_setup(name, SETUPS[name])  # fail before any GPU work
    if not torch.cuda.is_available():
        sys.exit("train_throughput: needs a CUDA GPU")
    lengths = [int(x) for x in args.lengths.split(",")]
    device = torch.cuda.get_device_name(0)
    print(f"device: {device}; torch {torch.__version__}")
    print(f"MFU = model FLOPs / time / {PEAK_FLOPS / 1e12:.0f} TFLOP/s (dense bf16 peak); {FORMULA}")
    results = {"device": device, "torch": torch.__version__, "peak_flops": PEAK_FLOPS, "formula": FORMULA,
               "model": args.model, "setups": {n: SETUPS[n] or "plain transformers loop" for n in names}, "runs": []}
    for n in names:
        print(f"  {n}: {SETUPS[n] or 'plain transformers: SDPA (default backend order), AdamW, no checkpointing'}")
    print(f"{'setup':<10} {'T':>7} {'tok/s':>9} {'MFU':>6} {'peak GiB':>9}")
    for name in names:
        free_memory()
        step = make_step(name, args.model)
        cfg = step.model.config
        n = non_embedding_params(step.model)
        results.setdefault("params", {})[name] = n
        if args.profile:
            profile_step(step, lengths[0])
        for T in lengths:
            row = {"setup": name, "length": T}
            try:
                long = T > 131072
                m = measure(step, T, args.long_repeats if long else args.repeats, args.long_warmup if long else args.warmup)
                flops = train_flops_per_step(n, cfg.num_hidden_layers, cfg.hidden_size, T)
                row.update(m, tokens_per_s=T / m["seconds_per_step"], mfu=flops / m["seconds_per_step"] / PEAK_FLOPS)
                print(f"{name:<10} {T:>7} {row['tokens_per_s']:>9.0f} {row['mfu']:>6.1%} {row['peak_gib']:>9.2f}",
                      flush=True)
            except BaseException as e:  # noqa: BLE001
                if not is_oom(e):
                    raise
                row["oom"] = True
                print(f"{name:<10} {T:>7} {'out of memory':>26}", flush=True)
            results["runs"].append(row)
            free_memory()
            if row.get("oom"):
                break
        # Probed after the setup's steps: probed first in a process, the fa4 setup once read cuDNN
        # although its steps ran FlashAttention-4 (its kernels are in the profile).
        backend = "auto" if SETUPS[name] is None else parse_setup(name, SETUPS[name]).sdpa_backend
        kernel = attention_kernel(backend, cfg)
        results.setdefault("attention_kernel", {})[name] = kernel
        print(f"{name}: attention kernel {kernel}", flush=True)
        del step
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
