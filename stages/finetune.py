"""Stage finetune: LoRA or full fine-tuning of the extended model under Accelerate.

On several GPUs, run the stage's command from dvc.yaml under Accelerate:
`accelerate launch --config_file configs/accelerate/<cfg>.yaml stages/finetune.py --model ... (same arguments)`.
"""

import argparse
from pathlib import Path

from longctx.io import atomic_write_json
from longctx.params import stage_params
from longctx.train import finetune

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="extended model folder (models/extended)")
    ap.add_argument("--data", type=Path, required=True, help="training rows (train.jsonl from prepare)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the adapter or full weights")
    ap.add_argument("--summary", type=Path, required=True, help="training summary (JSON metrics)")
    ap.add_argument("--live", type=Path, required=True, help="dvclive folder for the training curves")
    args = ap.parse_args()
    p = stage_params()
    summary = finetune(args.model, args.data, args.out, p.train, p.model.dtype, live_dir=args.live)
    atomic_write_json(args.summary, summary)
