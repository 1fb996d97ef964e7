"""Stage eval_samples: generate every evaluation prompt once, so all models see byte-identical inputs."""

import argparse
from pathlib import Path

from longctx.evaluation.samples import save_samples
from longctx.evaluation.suite import make_eval_samples
from longctx.modeling import load_tokenizer
from longctx.params import stage_params

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokenizer", type=Path, required=True, help="model folder whose tokenizer to use")
    ap.add_argument("--out", type=Path, required=True, help="samples file to write (JSON lines)")
    args = ap.parse_args()
    p = stage_params()
    samples = make_eval_samples(load_tokenizer(args.tokenizer), p.eval)
    save_samples(samples, args.out)
    print(f"eval_samples: {len(samples)} samples")
