"""Stage evaluate: score one model on the evaluation samples; `--finetuned` adds the fine-tuned weights."""

import sys

from longctx.cli import stage_args
from longctx.evaluation.samples import load_samples
from longctx.evaluation.suite import evaluate_model
from longctx.io import NonFiniteMetricError, atomic_write_json
from longctx.methods import warn_eval_beyond_support
from longctx.modeling import load_finetuned, load_model, load_tokenizer, native_record, read_extension
from longctx.params import stage_params

if __name__ == "__main__":
    args = stage_args(__doc__, {"model": "model folder (base or extended)",
                                "tokenizer": "model folder whose tokenizer to use",
                                "samples": "samples from eval_samples", "out": "metrics file to write (JSON)"},
                      optional={"finetuned": "fine-tuned adapter or weights on top of --model"})
    p = stage_params(model_dir=args.model, eval_memory=True)  # a length that cannot fit stops here
    if args.finetuned is None:
        model = load_model(args.model, dtype=p.model.dtype, attn_implementation=p.model.attn_implementation)
    else:
        warn_eval_beyond_support(read_extension(args.model), max(p.eval.all_lengths()))
        model = load_finetuned(args.finetuned, args.model, dtype=p.model.dtype,
                               attn_implementation=p.model.attn_implementation)
    metrics = evaluate_model(model, load_samples(args.samples), p.eval, tokenizer=load_tokenizer(args.tokenizer))
    metrics["info.chat_template"] = int(p.eval.use_chat_template)  # recorded: it changes every prompt
    # the window that "in-window" scores are measured inside (aggregate's effective length)
    ext = read_extension(args.model)
    metrics["info.native_window"] = ext.native_window if ext else native_record(args.model)["native_window"]
    try:
        atomic_write_json(args.out, metrics)
    except NonFiniteMetricError as e:  # e.g. NaN weights: one line, exit 1, no metrics file
        sys.exit(f"error: evaluate: {e}")
    print(f"evaluate {args.out}: {metrics}")
