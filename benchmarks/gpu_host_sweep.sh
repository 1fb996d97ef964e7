#!/usr/bin/env bash
# Third GPU-host run behind docs/RESULTS.md and docs/report/: the method sweep at a 32k target
# (every method fine-tuned 30 LoRA steps at 8k, except training-free SelfExtend), evaluated at 8k/16k/32k.
set -uo pipefail
source benchmarks/gpu_setup.sh
python3 - <<'PY'
import yaml
p = yaml.safe_load(open("params.yaml"))
p["eval"]["lengths"] = [8192, 16384, 32768]
p["eval"]["passkey"].update(depths=[0.1, 0.3, 0.5, 0.7, 0.9], samples=2, lengths=None)
p["eval"]["batch_size"] = 2
p["data"].update(num_samples=100, max_tokens=8192)
p["train"].update(seq_len=8192, steps=30)
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 560 python3 benchmarks/sweep.py --methods none,pi,yarn,abf,entropy_abf,selfextend,cream --out $OUT/report 2>&1 \
  | grep -v "it/s\]\|s/it\]\|Loading weights\|step/s\]\|sample/s\]\|window/s\]"
