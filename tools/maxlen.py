"""Longest training (or evaluation) sequence that fits on this device, with the configured train setup.

Not a DVC stage: a tool to size `train.seq_len` / `eval.lengths` before a run. Reads `train` and
`model.dtype` from params.yaml (mode, batch_size, gradient_checkpointing, fused_ce, liger, sdpa_backend,
attn_implementation), runs one step per tried length on random tokens, and prints the longest length
that fits:

    python tools/maxlen.py                        # training step of models/extended
    python tools/maxlen.py --eval                 # one evaluation forward instead
    python tools/maxlen.py --model models/base --start 8192 --max 262144 --granularity 1024 --out maxlen.json
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longctx.io import atomic_write_json  # noqa: E402
from longctx.maxlen import build_step, find_max_length  # noqa: E402
from longctx.params import load_params  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/extended", help="model folder (default models/extended)")
    ap.add_argument("--eval", action="store_true", help="one no-grad forward instead of a training step")
    ap.add_argument("--start", type=int, default=1024, help="first length tried (a multiple of --granularity)")
    ap.add_argument("--max", type=int, default=1 << 20, help="largest length tried")
    ap.add_argument("--granularity", type=int, default=1024)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", help="also write the result (and every try) to this JSON file")
    args = ap.parse_args()
    p = load_params(args.params)
    step = build_step(args.model, p.train, p.model.dtype, eval_only=args.eval)
    result = find_max_length(step, start=args.start, max_length=args.max, granularity=args.granularity)
    what = "evaluation forward" if args.eval else f"training step ({p.train.mode}, batch {p.train.batch_size})"
    print(f"maxlen: longest {what} that fits: {result['max_length']} tokens")
    if args.out:
        atomic_write_json(args.out, {"model": args.model, "eval": args.eval, **result})
