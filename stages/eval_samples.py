"""Stage eval_samples: generate every evaluation prompt once, so all models see byte-identical inputs."""

from longctx.cli import stage_args
from longctx.evaluation.samples import save_samples
from longctx.evaluation.suite import make_eval_samples
from longctx.modeling import load_tokenizer
from longctx.params import stage_check, stage_params
from longctx.sources import check_local_or_hub

if __name__ == "__main__":
    args = stage_args(__doc__, {"tokenizer": "model folder whose tokenizer to use",
                                "out": "samples file to write (JSON lines)"})
    p = stage_params()
    if p.eval.longbench.enabled and p.eval.longbench.source is None:  # the hub: seconds, not a minute of retries
        stage_check(check_local_or_hub, "THUDM/LongBench", "eval.longbench.source", repo_type="dataset")
    samples = make_eval_samples(load_tokenizer(args.tokenizer), p.eval)
    save_samples(samples, args.out)
    print(f"eval_samples: {len(samples)} samples")
