"""Training-free comparison of every method on the same evaluation samples (a benchmark, not a test).

Usage (after `dvc repro base_model eval_samples`, or the GPU host script):
    python benchmarks/methods_table.py [--methods none,pi,yarn] [--out table.json]
Prints a Markdown table: passkey accuracy and perplexity per length for each method.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from longctx.evaluation.samples import load_samples
from longctx.evaluation.suite import evaluate_model
from longctx.methods import METHODS
from longctx.modeling import load_model, make_extended_model
from longctx.params import load_params


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=",".join(m for m in METHODS if METHODS[m].family in ("none", "rope", "attention")))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    p = load_params()
    samples = load_samples(Path("data/eval/samples.jsonl"))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            target = p.target_length if method != "none" else max(p.eval.lengths)
            out = Path(tmp) / method
            make_extended_model(Path("models/base"), out, method, p.methods.get(method), target)
            model = load_model(out, dtype=p.model.dtype)
            t0 = time.perf_counter()
            rows[method] = evaluate_model(model, samples, p.eval)
            rows[method]["seconds"] = round(time.perf_counter() - t0, 1)
            print(method, json.dumps(rows[method]), flush=True)
            del model
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    lengths = sorted(p.eval.lengths)
    head = "| method | " + " | ".join(f"passkey {n}" for n in lengths) + " | " + " | ".join(f"ppl {n}" for n in lengths)
    print("\n" + head + " | eval s |")
    print("|" + "---|" * (2 * len(lengths) + 2))
    for m, r in rows.items():
        pk = " | ".join(f"{r.get(f'passkey.{n}', float('nan')):.2f}" for n in lengths)
        pp = " | ".join(f"{r.get(f'ppl.{n}', float('nan')):.2f}" for n in lengths)
        print(f"| {m} | {pk} | {pp} | {r['seconds']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
