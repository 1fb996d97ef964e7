#!/usr/bin/env bash
# Training-speed run behind docs/RESULTS.md (issue 6): GPU-only kernel tests, then the throughput table.
#
# Carried (git-ignored): .fa4a/ and .fa4b/ hold the wheels of flash-attn-4, its CuTe-DSL dependencies and
# liger-kernel, the 92 MB nvidia-cutlass-dsl-libs-cu13 wheel split in two (`split -b 48M`, one part per
# call: call 1 copies .fa4a to /tmp/wheels, call 2 brings .fa4b and runs this script); and
# models/base/config.json. Throughput and memory do not depend on weight values, so the model is the
# embedded SmolLM2-135M architecture with random weights (no 98 MB GGUF to carry).
set -uo pipefail
mkdir -p /tmp/wheels
if [ -f /tmp/wheels/cu13.part.aa ] && [ -f .fa4b/cu13.part.ab ]; then
  cat /tmp/wheels/cu13.part.aa .fa4b/cu13.part.ab \
    > /tmp/wheels/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
  rm /tmp/wheels/cu13.part.aa
fi
[ -d /tmp/site/flash_attn ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  /tmp/wheels/*.whl || exit 1
# --target skips the .pth file that puts the CuTe DSL's own packages (cutlass) on sys.path
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'EOF'
import torch
from transformers import AutoConfig, AutoModelForCausalLM
cfg = AutoConfig.from_pretrained("models/base")
torch.manual_seed(0)
AutoModelForCausalLM.from_config(cfg).save_pretrained("/tmp/base")
print("random-init SmolLM2-135M architecture at /tmp/base")
EOF
cp models/base/native.json /tmp/base/ 2>/dev/null
timeout 150 python3 -m pytest -q -rfs ${TESTS:-tests/test_kernels.py} 2>&1 | grep -E "passed|failed|FAILED|SKIPPED|^E  " | head -30
[ "${LENGTHS:-}" = none ] || timeout ${BENCH_TIMEOUT:-330} python3 benchmarks/train_throughput.py --model /tmp/base \
  --lengths ${LENGTHS:-8192,16384,32768,65536,131072} ${BENCH_ARGS:-} --out $OUT/train_bench.json 2>&1 \
  | grep -v "it/s\]\|Loading weights"
if [ -n "${FINETUNE_CHECK:-}" ]; then
  timeout 200 python3 benchmarks/gpu_finetune_check.py --base /tmp/base --out $OUT/finetune_check.json 2>&1 \
    | grep -v "it/s\]\|s/it\]\|Loading weights\|UserWarning\|exe_args"
fi
