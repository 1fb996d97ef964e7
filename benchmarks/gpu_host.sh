#!/usr/bin/env bash
# The GPU-host run behind docs/RESULTS.md: the pipeline at a 32k evaluation, the training-free
# methods table, and SelfExtend speed. Expects the GGUF at /tmp/smol.gguf and wheels in .whl/
# (gguf, chitchat-dataset), as the device tool carries them; writes logs to $OUT.
set -uo pipefail
source benchmarks/gpu_setup.sh
python3 benchmarks/gpu_params.py --steps "${GPU_STEPS:-30}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
stage_cmd() { python3 -c "import sys, yaml; print(yaml.safe_load(open('dvc.yaml'))['stages'][sys.argv[1]]['cmd'])" "$1"; }
for s in base_model prepare extend finetune eval_samples evaluate_base evaluate_extended aggregate; do
  cmd=$(stage_cmd $s)  # the stage's command from dvc.yaml (this host has no DVC), with the host's python3
  t0=$(date +%s.%N); python3 ${cmd#python } 2>&1 | grep -v "it/s\]\|Loading weights\|Converting" | tail -4
  echo "stage $s: $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s"
done
cp metrics/summary.json metrics/train.json metrics/data.json $OUT/ 2>/dev/null; cp plots/*.png $OUT/ 2>/dev/null
timeout 150 python3 benchmarks/selfextend_speed.py --lengths 32768,65536 2>&1 | grep -v "Loading weights"
timeout 240 python3 benchmarks/methods_table.py --out $OUT/methods_table.json 2>&1 | grep -v "it/s\]\|Loading weights\|^[a-z_]* {"
