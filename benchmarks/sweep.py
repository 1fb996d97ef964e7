"""A method sweep in one process, for hosts without DVC; feeds the same report code as `stages/report.py`.

Usage (repo root): python benchmarks/sweep.py --methods none,pi,yarn,abf,entropy_abf,selfextend,cream --out docs/report
Runs the pipeline's steps with the current params.yaml for each method: base model and data once,
then extend -> finetune (train.steps; SelfExtend is evaluated training-free) -> evaluate, and writes
the cross-experiment report. With DVC available, prefer `dvc exp run --queue` (README: "Comparing methods").
"""

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from longctx.aggregate import summarize
from longctx.base_model import materialize_base_model
from longctx.data import prepare_sft_data
from longctx.evaluation.suite import evaluate_model, make_eval_samples
from longctx.modeling import load_model, load_tokenizer, make_extended_model
from longctx.params import load_params
from longctx.report import write_report
from longctx.train import finetune, load_finetuned

TRAINING_FREE_ONLY = ("selfextend",)  # fine-tuning through its two-pass attention is not validated on GPU yet


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="none,pi,yarn,abf,entropy_abf,selfextend,cream")
    ap.add_argument("--out", default="docs/report")
    args = ap.parse_args()
    p = load_params()
    base = Path("models/base")
    if not (base / "native.json").exists():
        materialize_base_model(p.model.name_or_path, base, p.model.revision, p.model.trust_remote_code)
    tok = load_tokenizer(base)
    prepare_sft_data(p.data, tok, Path("data/sft"))
    samples = make_eval_samples(tok, p.eval)
    base_metrics = evaluate_model(load_model(base, dtype=p.model.dtype), samples, p.eval, tok)
    show, raw = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            ext_dir, ft_dir = Path(tmp) / f"{method}-ext", Path(tmp) / f"{method}-ft"
            target = p.target_length if method != "none" else max(p.target_length, max(p.eval.all_lengths()))
            make_extended_model(base, ext_dir, method, p.methods.get(method), target)
            tp = p.train
            if method in TRAINING_FREE_ONLY:
                tp = dataclasses.replace(tp, steps=0)
            train = finetune(ext_dir, Path("data/sft/train.jsonl"), ft_dir, tp, p.model.dtype,
                             checkpoint_dir=Path(tmp) / "ckpt")
            model = load_finetuned(ft_dir, ext_dir, dtype=p.model.dtype)
            ext_metrics = evaluate_model(model, samples, p.eval, tok)
            summary = summarize({"base": base_metrics, "extended": ext_metrics}, train)
            params = {"method": method, "target_length": target, "train": {"steps": tp.steps, "mode": tp.mode}}
            show.append({"rev": f"sweep-{method}", "name": method,
                         "data": {"params": {"params.yaml": {"data": params}},
                                  "metrics": {"metrics/summary.json": {"data": summary}}},
                         "experiments": None})
            raw[method] = summary
            print(f"{method}: {time.perf_counter() - t0:.1f} s", json.dumps(
                {k: v for k, v in summary.items() if k.count(".") == 2 and ".d" not in k}), flush=True)
            del model
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "sweep.json").write_text(json.dumps(raw, indent=1, sort_keys=True))
    source = "benchmarks/sweep.py (one process; same pipeline functions and report as the DVC stages)"
    print(Path(write_report(args.out, show=show, source=source)).read_text())


if __name__ == "__main__":
    main()
