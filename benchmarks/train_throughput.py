"""Training throughput, MFU and peak memory by sequence length: a plain baseline against this project's step.

Run on the GPU host from the repo root (no dvc/dvclive needed):

    python benchmarks/train_throughput.py --model models/base --lengths 8192,16384,32768,65536,131072 \
        --out $OUT/train_bench.json

Setups (each at every length, ascending, until it runs out of memory):
- ``baseline``: plain transformers model, bf16 weights, SDPA, AdamW, full fine-tuning, no gradient
  checkpointing, the model's own loss (full logits), batch 1.
- ``ours_full`` / ``ours_lora``: ``longctx.maxlen.build_step`` (the same setup as ``longctx.train.finetune``:
  float32 master weights under bf16 autocast), full or LoRA, gradient checkpointing and fused CE on.

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

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)

    def step(length: int) -> float:
        ids = torch.randint(0, model.config.vocab_size, (1, length), generator=gen).cuda()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    step.model = model
    return step


def ours_step(model_dir: str, mode: str):
    from longctx.maxlen import build_step
    from longctx.params import TrainParams

    tp = TrainParams(mode=mode, batch_size=1, gradient_checkpointing=True, fused_ce=True, lr=1e-5)
    return build_step(model_dir, tp, dtype="auto", device="cuda")


SETUPS = {"baseline": baseline_step, "ours_full": lambda d: ours_step(d, "full"),
          "ours_lora": lambda d: ours_step(d, "lora")}


def measure(step, length: int, repeats: int) -> dict:
    step(length)  # warm-up (allocator, kernels, optimizer state)
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
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="train_bench.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("train_throughput: needs a CUDA GPU")
    lengths = [int(x) for x in args.lengths.split(",")]
    device = torch.cuda.get_device_name(0)
    print(f"device: {device}; torch {torch.__version__}")
    print(f"MFU = model FLOPs / time / {PEAK_FLOPS / 1e12:.0f} TFLOP/s (dense bf16 peak); {FORMULA}")
    results = {"device": device, "peak_flops": PEAK_FLOPS, "formula": FORMULA, "model": args.model, "runs": []}
    print(f"{'setup':<10} {'T':>7} {'tok/s':>9} {'MFU':>6} {'peak GiB':>9}")
    for name in args.setups.split(","):
        free_memory()
        step = SETUPS[name](args.model)
        cfg = step.model.config
        n = non_embedding_params(step.model)
        results.setdefault("params", {})[name] = n
        for T in lengths:
            row = {"setup": name, "length": T}
            try:
                m = measure(step, T, args.repeats)
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
        del step
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
