"""GPU check of the finetune stage's own loop (Accelerate, bf16 autocast over float32 weights): the fast
kernels (selective checkpointing, fused CE, Liger, FlashAttention-4) train to the losses of the plain setup.

    python benchmarks/gpu_finetune_check.py --base /tmp/base --method entropy_abf --seq-len 16384

Prints both loss curves, their largest difference, and each run's tokens/s and peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from longctx.modeling import make_extended_model  # noqa: E402
from longctx.params import TrainParams  # noqa: E402
from longctx.training import finetune  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--method", default="entropy_abf")
    ap.add_argument("--seq-len", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    make_extended_model(Path(args.base), work / "ext", args.method, {}, max(32768, 4 * args.seq_len))
    gen = torch.Generator().manual_seed(0)
    with open(work / "train.jsonl", "w") as f:
        for _ in range(args.steps):
            ids = torch.randint(0, 49152, (args.seq_len,), generator=gen).tolist()
            f.write(json.dumps({"input_ids": ids, "labels": ids}) + "\n")
    plain = TrainParams(steps=args.steps, mode="full", seq_len=args.seq_len, lr=1e-4, scheduler="constant")
    fast = dataclasses.replace(plain, gradient_checkpointing="selective", fused_ce=True, liger=True, sdpa_backend="fa4")
    runs = {}
    for name, tp in (("plain", plain), ("fast", fast)):
        losses = []
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        finetune(work / "ext", work / "train.jsonl", work / name, tp, checkpoint_dir=work / f"ck_{name}",
                 on_step=lambda s, loss: losses.append(loss))
        seconds = time.perf_counter() - t0
        runs[name] = {"losses": losses, "seconds": round(seconds, 2),
                      "tokens_per_s": round(args.steps * args.seq_len / seconds),
                      "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
        print(f"{name}: {runs[name]}", flush=True)
    diff = max(abs(a - b) for a, b in zip(runs["plain"]["losses"], runs["fast"]["losses"]))
    print(f"method {args.method}, {args.seq_len} tokens: largest loss difference plain vs fast {diff:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"method": args.method, "seq_len": args.seq_len, "runs": runs,
                                              "max_loss_diff": diff}, indent=2) + "\n")


if __name__ == "__main__":
    main()
