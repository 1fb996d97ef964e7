#!/usr/bin/env bash
# GPU-host run behind docs/RESULTS.md "Why PI-family fine-tuning lost retrieval" (issue 12):
# benchmarks/pi_family_check.py on the embedded model, conditions given as arguments, e.g.
#   source benchmarks/gpu_setup.sh && bash benchmarks/gpu_host_pi.sh ref:pi:sft ours:pi:sft ours:pi:docs
# benchmarks/gpu_setup.sh stands the embedded GGUF up (it travels in two calls) and installs the wheels.
# The data: pi_family_check.py builds it on the host when missing (--num-samples windows at --seq-len); files
# carried as pfdata/<name>.jsonl.gz are used instead (-> /tmp/pi_family/data_<name>/train.jsonl).
# PI_ARGS passes options (e.g. --passkey-samples 10), PI_TIMEOUT caps the whole sweep (seconds).
set -uo pipefail
[ -f /tmp/smol.gguf ] || { echo "no /tmp/smol.gguf: source benchmarks/gpu_setup.sh with both GGUF parts first"; exit 1; }
t0=$(date +%s)
[ -f models/base/model.safetensors ] || python3 stages/base_model.py --out models/base 2>&1 | grep -v "it/s\]\|Loading weights\|Converting" | tail -2
echo "base model: $(( $(date +%s) - t0 )) s"
for f in $(ls pfdata/*.jsonl.gz 2>/dev/null); do
  n=$(basename "$f" .jsonl.gz); mkdir -p /tmp/pi_family/data_$n; gunzip -c "$f" > /tmp/pi_family/data_$n/train.jsonl
done
timeout ${PI_TIMEOUT:-280} python3 benchmarks/pi_family_check.py --base models/base --work /tmp/pi_family \
  --out $OUT/pi_family.json ${PI_ARGS:-} "$@" 2>&1 | grep -v "it/s\]\|s/it\]\|Loading weights\|UserWarning\|warnings.warn"
echo "total: $(( $(date +%s) - t0 )) s"
