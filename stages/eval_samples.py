"""Stage eval_samples: generate every evaluation prompt once, so all models see byte-identical inputs."""

from pathlib import Path

from longctx.evaluation.samples import save_samples
from longctx.evaluation.suite import make_eval_samples
from longctx.modeling import load_tokenizer
from longctx.params import stage_params

if __name__ == "__main__":
    p = stage_params()
    samples = make_eval_samples(load_tokenizer("models/base"), p.eval)
    save_samples(samples, Path("data/eval/samples.jsonl"))
    print(f"eval_samples: {len(samples)} samples")
