#!/usr/bin/env bash
# The GPU-host run behind docs/RESULTS.md: the pipeline at a 32k evaluation, the training-free
# methods table, and SelfExtend speed. Expects the GGUF at /tmp/smol.gguf and wheels in .whl/
# (gguf, chitchat-dataset), as the device tool carries them; writes logs to $OUT.
set -uo pipefail
source benchmarks/gpu_setup.sh
python3 - <<'PY'
import yaml
p = yaml.safe_load(open("params.yaml"))
p["eval"]["lengths"] = [8192, 16384, 32768]
p["eval"]["passkey"].update(depths=[0.1, 0.3, 0.5, 0.7, 0.9], samples=2)
p["eval"]["batch_size"] = 2
p["data"].update(num_samples=100, max_tokens=8192)
p["train"].update(seq_len=8192, steps=int(__import__("os").environ.get("GPU_STEPS", "30")))
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for s in base_model prepare extend finetune eval_samples "evaluate base" "evaluate extended" aggregate; do
  t0=$(date +%s.%N); python3 stages/${s%% *}.py ${s#* } 2>&1 | grep -v "it/s\]\|Loading weights\|Converting" | tail -4
  echo "stage $s: $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s"
done
cp metrics/summary.json metrics/train.json metrics/data.json $OUT/ 2>/dev/null; cp plots/*.png $OUT/ 2>/dev/null
timeout 150 python3 benchmarks/selfextend_speed.py --lengths 32768,65536 2>&1 | grep -v "Loading weights"
timeout 240 python3 benchmarks/methods_table.py --out $OUT/methods_table.json 2>&1 | grep -v "it/s\]\|Loading weights\|^[a-z_]* {"
