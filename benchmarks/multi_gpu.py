"""Several GPUs on one host (issue 15): full fine-tuning with DDP and with FSDP2, random weights of a real shape.

Launch with one process per GPU (``torchrun`` is what ``accelerate launch`` runs underneath):

    torchrun --standalone --nproc-per-node 2 benchmarks/multi_gpu.py --mode fsdp2 --shape llama3.1-8b \
        --lengths 16384,32768 --out $OUT/multi_gpu.jsonl

- ``--mode ddp``: every GPU holds the whole model (``torch.nn.parallel.DistributedDataParallel``).
  Run it with 1 and with N processes: scaling efficiency = tokens/s(N) / (N x tokens/s(1)).
- ``--mode fsdp2``: ``torch.distributed.fsdp.fully_shard`` on every decoder layer and the root (what
  ``configs/accelerate/fsdp2.yaml`` asks Accelerate for): parameters, gradients and AdamW states sharded, bf16
  compute with float32 master weights and float32 gradient reduction. The model is built on the meta device,
  sharded, then each rank allocates and fills only its own shard, so an 8B model never exists whole on one GPU.

Both: float32 master weights under bf16 autocast (the finetune stage's full mode), selective activation
checkpointing (``longctx.kernels.checkpointing_kwargs``: everything recomputed but attention), the model's own
loss over full logits, fused AdamW, batch 1 of ``T`` tokens per GPU, distinct random tokens per rank.
One JSON line per length (rank 0): tokens/s per GPU and in all, MFU per GPU, the largest peak memory of any rank.
MFU counts 6*N*T + 6*L*h*T^2 per sequence (``scale_8b.train_flops``) against 790 TFLOP/s per H200.
``--smoke`` runs the tiny shape on the CPU with gloo (checks the script; measures nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from longctx import kernels, shapes  # noqa: E402
from scale_8b import PEAK, non_embedding, train_flops  # noqa: E402


def build(mode: str, cfg, device: torch.device):
    """The model to train: float32 master weights, selective checkpointing, wrapped for ``mode``."""
    model = shapes.meta_model(cfg, torch.float32, attn_implementation="sdpa")
    if mode == "fsdp2":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    shapes.init_random_(model, device, seed=0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kernels.checkpointing_kwargs("selective"))
    model.config.use_cache = False
    model.train()
    if mode == "ddp" and dist.get_world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def measure(model, opt, cfg, T: int, steps: int, device: torch.device) -> tuple[float, float, int]:
    """Seconds per optimizer step (after one warm-up step), last loss, this rank's peak bytes."""
    g = torch.Generator(device=device).manual_seed(1000 + dist.get_rank())
    ids = torch.randint(0, cfg.vocab_size, (1, T), device=device, generator=g)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step():
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    seconds = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return seconds, float(loss.detach().float()), peak


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["ddp", "fsdp2"], required=True)
    ap.add_argument("--shape", default="llama3.2-1b")
    ap.add_argument("--lengths", default="16384", help="comma-separated sequence lengths per GPU")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per length (after one warm-up)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny shape on the CPU with gloo")
    args = ap.parse_args()

    smoke = args.smoke or not torch.cuda.is_available()
    dist.init_process_group("gloo" if smoke else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    if smoke:
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    cfg = shapes.shape_config("tiny" if smoke else args.shape)
    n = non_embedding(cfg)
    model = build(args.mode, cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

    for T in [int(x) for x in args.lengths.split(",")]:
        try:
            seconds, loss, peak = measure(model, opt, cfg, T, args.steps, device)
            oom = False
        except torch.OutOfMemoryError:
            seconds, loss, peak, oom = float("nan"), float("nan"), torch.cuda.max_memory_allocated(), True
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        peaks = torch.tensor([peak, int(oom)], dtype=torch.float64, device=device)
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
        if rank == 0:
            row = {
                "mode": args.mode, "shape": "tiny" if smoke else args.shape, "gpus": world, "seq_len": T,
                "device": "cpu" if smoke else torch.cuda.get_device_name(device),
                "oom": bool(peaks[1].item()), "peak_gib_max_rank": round(peaks[0].item() / 2**30, 1),
            }
            if not row["oom"]:
                per_gpu = T / seconds
                row.update(step_s=round(seconds, 3), tokens_per_s_per_gpu=round(per_gpu),
                           tokens_per_s_total=round(per_gpu * world),
                           mfu_per_gpu=round(train_flops(cfg, n, T) / seconds / PEAK, 3), loss=round(loss, 4))
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
        if peaks[1].item():  # longer lengths would not fit either
            break
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
