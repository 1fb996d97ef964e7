#!/usr/bin/env bash
# The method sweep at a 32k target on the GPU host, through DVC itself (the pipeline's own stages,
# cache and experiments; no second pipeline): every method fine-tuned 30 LoRA steps at 8k, except
# training-free SelfExtend, evaluated at 8k/16k/32k, then one report over the experiments.
# Needs DVC on the host (carry its wheels in .whl_dvc/, the GGUF and the others as gpu_setup.sh says).
set -uo pipefail
source benchmarks/gpu_setup.sh
python3 benchmarks/gpu_params.py --steps 30
nvidia-smi --query-gpu=name --format=csv,noheader
if [ ! -d .git ]; then  # the device tool copies files, not the repository: experiments need a commit
  git init -q && git add -A && git -c user.name=gpu-host -c user.email=gpu-host@localhost commit -qm "GPU host run"
fi
git -c user.name=gpu-host -c user.email=gpu-host@localhost commit -qam "gpu_params.py" || true
dvc exp run --queue -S method=none,pi,yarn,abf,entropy_abf,cream
dvc exp run --queue -S method=selfextend -S train.steps=0   # training-free
timeout 560 dvc exp run --run-all -j 1 2>&1 | grep -v "it/s\]\|s/it\]\|Loading weights\|step/s\]\|sample/s\]\|window/s\]"
dvc exp show --no-pager --md | head -40
python3 tools/report.py --out $OUT/report
