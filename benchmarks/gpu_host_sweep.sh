#!/usr/bin/env bash
# Third GPU-host run behind docs/RESULTS.md and docs/report/: the method sweep at a 32k target
# (every method fine-tuned 30 LoRA steps at 8k, except training-free SelfExtend), evaluated at 8k/16k/32k.
set -uo pipefail
source benchmarks/gpu_setup.sh
python3 benchmarks/gpu_params.py --steps 30
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 560 python3 benchmarks/sweep.py --methods none,pi,yarn,abf,entropy_abf,selfextend,cream --out $OUT/report 2>&1 \
  | grep -v "it/s\]\|s/it\]\|Loading weights\|step/s\]\|sample/s\]\|window/s\]"
