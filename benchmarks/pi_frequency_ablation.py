"""Which RoPE frequencies does PI break? Training-free passkey inside the native window with the rotary
frequencies divided by 4 in all dimensions (PI x4) or only in some, on the embedded model (CPU, minutes).

    python benchmarks/pi_frequency_ablation.py --base models/base --length 1024 --out docs/results/pi_frequency_ablation.json

Each variant sets ``rotary_emb.inv_freq`` directly: theta_i / 4 for the dimension pairs it names
(pair 0 = the highest frequency, one turn per ~6 tokens; pair 31 the lowest), theta_i elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from longctx.evaluation.passkey import generate_passkey  # noqa: E402
from longctx.evaluation.scoring import greedy_answer_correct  # noqa: E402
from longctx.modeling import load_model, load_tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=2, help="per depth (depths 0.1, 0.5, 0.9)")
    ap.add_argument("--factor", type=float, default=4.0)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = load_tokenizer(args.base)
    model = load_model(args.base, dtype="float32", device="cpu")
    rotary = model.get_decoder().rotary_emb
    base_inv = rotary.inv_freq.clone()
    n = base_inv.numel()
    variants = {
        "none (native frequencies)": [],
        f"PI x{args.factor:g}: all pairs": list(range(n)),
        f"PI x{args.factor:g} on the high-frequency quarter only (pairs 0-{n // 4 - 1})": list(range(n // 4)),
        f"PI x{args.factor:g} on all but the high-frequency quarter (pairs {n // 4}-{n - 1})": list(range(n // 4, n)),
        f"PI x{args.factor:g} on the low-frequency half only (pairs {n // 2}-{n - 1})": list(range(n // 2, n)),
    }
    samples = [s for d in (0.1, 0.5, 0.9) for s in generate_passkey(tok, args.length, d, args.samples, 1234, False)]
    rows = []
    for name, pairs in variants.items():
        inv = base_inv.clone()
        inv[pairs] = inv[pairs] / args.factor
        rotary.inv_freq = inv
        t0 = time.perf_counter()
        correct = [greedy_answer_correct(model, s) for s in samples]
        rows.append({"variant": name, "pairs_divided": len(pairs), "passkey": sum(correct) / len(correct),
                     "samples": len(correct), "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"length": args.length, "factor": args.factor, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
