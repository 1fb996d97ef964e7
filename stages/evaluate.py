"""Stage evaluate: score one model (base or extended+fine-tuned) on data/eval/samples.jsonl.

Usage: python stages/evaluate.py base|extended
"""

import sys
from pathlib import Path

from longctx.evaluation.samples import load_samples
from longctx.evaluation.suite import evaluate_model
from longctx.io import atomic_write_json
from longctx.modeling import load_model, load_tokenizer, read_extension
from longctx.methods import warn_eval_beyond_support
from longctx.params import stage_params
from longctx.train import load_finetuned

if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    if which not in ("base", "extended"):
        sys.exit("usage: python stages/evaluate.py base|extended")
    p = stage_params()
    if which == "base":
        model = load_model("models/base", dtype=p.model.dtype)
    else:
        warn_eval_beyond_support(read_extension(Path("models/extended")), max(p.eval.all_lengths()))
        model = load_finetuned(Path("models/finetuned"), Path("models/extended"), dtype=p.model.dtype)
    metrics = evaluate_model(model, load_samples(Path("data/eval/samples.jsonl")), p.eval,
                             tokenizer=load_tokenizer("models/base"))
    metrics["info.chat_template"] = int(p.eval.use_chat_template)  # recorded: it changes every prompt
    atomic_write_json(f"metrics/eval_{which}.json", metrics)
    print(f"evaluate {which}: {metrics}")
