"""Reference fine-tune for Position Interpolation, written the way a transformers user would.

Nothing from ``longctx`` is imported: the base model is loaded with ``rope_parameters`` set to
linear scaling (PI, arXiv 2306.15595: positions divided by ``factor``), trained with a plain
PyTorch loop (AdamW, cosine schedule, bf16 autocast over float32 weights, gradient clipping at
1.0, the model's own causal-LM loss) on the rows of a ``train.jsonl`` (``input_ids`` + ``labels``,
-100 = no loss), and saved with ``save_pretrained``. The result loads with plain
``AutoModelForCausalLM.from_pretrained`` and is compared with the pipeline's own loop in
benchmarks/pi_family_check.py (docs/RESULTS.md, "Why PI-family fine-tuning lost retrieval").

    python benchmarks/pi_reference_finetune.py --base models/base --data data/sft/train.jsonl \\
        --factor 4 --steps 200 --seq-len 8192 --lr 2e-5 --out /tmp/pi_ref
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, get_cosine_schedule_with_warmup


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--factor", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = AutoConfig.from_pretrained(args.base, trust_remote_code=False)
    config.rope_parameters = {"rope_type": "linear", "factor": args.factor,
                              "rope_theta": config.rope_parameters["rope_theta"]}
    config.max_position_embeddings = int(config.max_position_embeddings * args.factor)
    model = AutoModelForCausalLM.from_pretrained(args.base, config=config, dtype=torch.float32,
                                                 trust_remote_code=False).to(device)
    model.train()

    rows = [json.loads(line) for line in open(args.data) if line.strip()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=args.steps)
    losses, t0 = [], time.perf_counter()
    order = []
    for step in range(args.steps):
        if not order:  # a fresh shuffle every epoch
            order = torch.randperm(len(rows)).tolist()
        row = rows[order.pop()]
        input_ids = torch.tensor([row["input_ids"][: args.seq_len]], device=device)
        labels = torch.tensor([row["labels"][: args.seq_len]], device=device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    seconds = time.perf_counter() - t0
    model.save_pretrained(args.out)
    summary = {"steps": args.steps, "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
               "loss_mean_last_half": round(sum(losses[len(losses) // 2:]) / len(losses[len(losses) // 2:]), 4),
               "seconds": round(seconds, 1)}
    print(f"reference PI fine-tune: {summary}")
    return summary


if __name__ == "__main__":
    main()
