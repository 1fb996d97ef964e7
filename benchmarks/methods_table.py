"""Compare methods on the same evaluation samples (a benchmark, not a test).

Usage (from the repo root, after `dvc repro base_model`):
    python benchmarks/methods_table.py [--methods none,pi,yarn] [--all-tasks] [--finetuned-steps 0] [--out t.json]

Each method is applied training-free to models/base with its params.yaml settings; samples come
from the eval params (``--all-tasks`` also enables needle, RULER and dialog recall). Prints one
Markdown table per task family, the suite's wall time per method, and the prefill efficiency:
the time the same tokens take as plain forwards (one per sample, nothing else) divided by the
suite's time.
"""

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from longctx.evaluation.suite import evaluate_model, make_eval_samples
from longctx.methods import METHODS
from longctx.modeling import load_model, load_tokenizer, make_extended_model
from longctx.params import load_params


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def forward_only_seconds(model, samples) -> float:
    """Lower bound: one plain forward (last-token logits) per sample, at each sample's length."""
    device = next(model.parameters()).device
    per_length = {}
    for n in sorted({len(s.input_ids) + len(s.answer_ids) for s in samples}):
        ids = torch.randint(100, 1000, (1, n), device=device)
        model(input_ids=ids, logits_to_keep=1)  # warm-up (and compilation)
        sync()
        t0 = time.perf_counter()
        model(input_ids=ids, logits_to_keep=1)
        sync()
        per_length[n] = time.perf_counter() - t0
    return sum(per_length[len(s.input_ids) + len(s.answer_ids)] for s in samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=",".join(m for m in METHODS if METHODS[m].family in ("none", "rope", "attention")))
    ap.add_argument("--all-tasks", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    p = load_params()
    if args.all_tasks:
        p.eval.needle.enabled = p.eval.ruler.enabled = p.eval.dialog_recall.enabled = True
    tok = load_tokenizer("models/base")
    samples = make_eval_samples(tok, p.eval)
    print(f"{len(samples)} samples, {sum(len(s.input_ids) for s in samples)} prompt tokens", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            target = p.target_length if method != "none" else max(p.eval.all_lengths())
            out = Path(tmp) / method
            make_extended_model(Path("models/base"), out, method, p.methods.get(method), target)
            model = load_model(out, dtype=p.model.dtype)
            evaluate_model(model, samples[:2], p.eval, tok)  # warm-up (FlexAttention compiles here)
            sync()
            t0 = time.perf_counter()
            rows[method] = evaluate_model(model, samples, p.eval, tok)
            sync()
            wall = time.perf_counter() - t0
            bound = forward_only_seconds(model, samples)
            rows[method].update(suite_seconds=round(wall, 2), forward_only_seconds=round(bound, 2),
                                prefill_efficiency=round(bound / wall, 3))
            print(method, json.dumps({k: rows[method][k] for k in ("suite_seconds", "forward_only_seconds",
                                                                    "prefill_efficiency")}), flush=True)
            del model
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    print_tables(rows, sorted(p.eval.all_lengths()))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


def print_tables(rows: dict, lengths: list[int]):
    tasks = defaultdict(set)
    for r in rows.values():
        for key in r:
            parts = key.split(".")
            if len(parts) == 2 and parts[1].isdigit():
                tasks[parts[0]].add(int(parts[1]))
    for task in sorted(tasks):
        ls = [n for n in lengths if n in tasks[task]]
        print(f"\n{task}\n| method | " + " | ".join(map(str, ls)) + " |\n|---|" + "---|" * len(ls))
        for m, r in rows.items():
            print(f"| {m} | " + " | ".join(f"{r.get(f'{task}.{n}', float('nan')):.2f}" for n in ls) + " |")
    print("\n| method | suite s | forward-only s | prefill efficiency |\n|---|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} | {r['suite_seconds']} | {r['forward_only_seconds']} | {r['prefill_efficiency']} |")


if __name__ == "__main__":
    main()
