#!/usr/bin/env bash
# Second GPU-host run behind docs/RESULTS.md: the whole evaluation suite for base vs yarn,
# entropy_abf and selfextend at 8k/16k/32k (with wall time and prefill efficiency), and the
# training throughput benchmark. Same setup as gpu_host.sh (GGUF at /tmp/smol.gguf, wheels in .whl/).
set -uo pipefail
source benchmarks/gpu_setup.sh
python3 benchmarks/gpu_params.py --needle
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 stages/base_model.py --out models/base 2>&1 | tail -1
timeout 330 python3 benchmarks/methods_table.py --methods none,yarn,entropy_abf,selfextend --all-tasks \
  --out $OUT/eval_suite.json 2>&1 | grep -v "it/s\]\|s/it\]\|Loading weights"
if [ -f benchmarks/train_throughput.py ]; then
  timeout 200 python3 benchmarks/train_throughput.py --model models/base --lengths 8192,16384,32768,65536,131072 \
    --out $OUT/train_bench.json 2>&1 | grep -v "it/s\]\|Loading weights"
fi
