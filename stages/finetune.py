"""Stage finetune: LoRA or full fine-tuning of models/extended under Accelerate, to models/finetuned.

Launch on several GPUs with `accelerate launch --config_file configs/accelerate/<cfg>.yaml stages/finetune.py`.
"""

from pathlib import Path

from longctx.io import atomic_write_json
from longctx.params import stage_params
from longctx.train import finetune

if __name__ == "__main__":
    p = stage_params()
    summary = finetune(Path("models/extended"), Path("data/sft/train.jsonl"), Path("models/finetuned"), p.train,
                       p.model.dtype, live_dir=Path("metrics/train"))
    atomic_write_json("metrics/train.json", summary)
