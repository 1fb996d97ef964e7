"""Stage evaluate: score one model on the evaluation samples; `--finetuned` adds the fine-tuned weights."""

import argparse
from pathlib import Path

from longctx.evaluation.samples import load_samples
from longctx.evaluation.suite import evaluate_model
from longctx.io import atomic_write_json
from longctx.methods import warn_eval_beyond_support
from longctx.modeling import load_model, load_tokenizer, native_record, read_extension
from longctx.params import stage_params
from longctx.train import load_finetuned

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True, help="model folder (models/base or models/extended)")
    ap.add_argument("--finetuned", type=Path, help="fine-tuned adapter or weights on top of --model")
    ap.add_argument("--tokenizer", type=Path, required=True, help="model folder whose tokenizer to use")
    ap.add_argument("--samples", type=Path, required=True, help="samples from eval_samples")
    ap.add_argument("--out", type=Path, required=True, help="metrics file to write (JSON)")
    args = ap.parse_args()
    p = stage_params()
    if args.finetuned is None:
        model = load_model(args.model, dtype=p.model.dtype)
    else:
        warn_eval_beyond_support(read_extension(args.model), max(p.eval.all_lengths()))
        model = load_finetuned(args.finetuned, args.model, dtype=p.model.dtype)
    metrics = evaluate_model(model, load_samples(args.samples), p.eval, tokenizer=load_tokenizer(args.tokenizer))
    metrics["info.chat_template"] = int(p.eval.use_chat_template)  # recorded: it changes every prompt
    # the window that "in-window" scores are measured inside (aggregate's effective length)
    ext = read_extension(args.model)
    metrics["info.native_window"] = ext.native_window if ext else native_record(args.model)["native_window"]
    atomic_write_json(args.out, metrics)
    print(f"evaluate {args.out}: {metrics}")
