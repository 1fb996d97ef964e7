"""Stage finetune: LoRA or full fine-tuning of the extended model under Accelerate.

On several GPUs, run the stage's command from dvc.yaml under Accelerate:
`accelerate launch --config_file configs/accelerate/<cfg>.yaml stages/finetune.py --model ... (same arguments)`.
"""

import sys

from longctx.cli import stage_args
from longctx.io import atomic_write_json
from longctx.params import stage_params
from longctx.training import finetune
from longctx.training.finite import NonFiniteError

if __name__ == "__main__":
    args = stage_args(__doc__, {"model": "extended model folder", "data": "training rows (train.jsonl from prepare)",
                                "out": "folder for the adapter or full weights",
                                "summary": "training summary (JSON metrics)",
                                "live": "dvclive folder for the training curves"})
    p = stage_params(model_dir=args.model)  # with the checks that need the model (LoRA module names)
    try:
        summary = finetune(args.model, args.data, args.out, p.train, p.model.dtype, live_dir=args.live)
    except NonFiniteError as e:  # a diverged run: one line, exit 1, nothing written
        sys.exit(f"error: {e}")
    atomic_write_json(args.summary, summary)
