#!/usr/bin/env bash
# Issue 14 follow-up, ONE device call (<= 480 s) from the repo root (/work/main copied to the host):
#  (a) greedy decode tokens/s after a 32k prefill, Llama-3.1-8B shape, plain vs SelfExtend, each with SDPA's
#      default order and with flash first (benchmarks/scale_8b.py --parts decode, with a profile of 2 steps);
#  (b) the finetune stage's own code path (longctx.training.recipe.finetune via benchmarks/finetune_scale_check.py):
#      LoRA r=16 on all linear layers at 32k, 3 steps, train.keep_activations=20, selective checkpointing,
#      Liger + fused CE + cuDNN attention, bf16 frozen weights under autocast: tokens/s and peak GiB per step.
#
# Carried (git-ignored, in /work/main): .gpu_scale2/whl/liger_kernel-0.8.5-py3-none-any.whl and
# .gpu_scale2/shape_llama3.1-8b/ (3.4 MB config-only folder: `materialize_shape('shape:llama3.1-8b', ...)` made
# on the CPU, because the host has no GGUF for the embedded tokenizer; weights are made on the GPU).
#
#   run(command="bash benchmarks/gpu_host_scale_check.sh", carry=[".gpu_scale2"], timeout_s=480)
#
# Results under $OUT: decode.jsonl, decode.log, finetune.jsonl, finetune.log, nvidia-smi.txt.
# SMOKE=1 runs both python parts with --smoke on the CPU (tiny shape; checks the script, measures nothing).
set -uo pipefail
CARRY=${CARRY:-.gpu_scale2}
OUT=${OUT:-/tmp/scale_check_out}
mkdir -p "$OUT"
if [ -n "${SMOKE:-}" ]; then
  SMOKE_ARGS="--smoke" BASE=${BASE:-/tmp/scale2_tiny_base} DECODE_ARGS="--decode-prefill 64 --decode-tokens 4"
else
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRY"/whl/*.whl || exit 1
  SMOKE_ARGS="" BASE=${BASE:-$CARRY/shape_llama3.1-8b} DECODE_ARGS="--decode-prefill 32768 --decode-tokens 16"
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/nvidia-smi.txt"

echo "== (a) decode after a long prefill: plain vs SelfExtend"
timeout ${DECODE_TIMEOUT:-210} python3 benchmarks/scale_8b.py --parts decode $DECODE_ARGS --decode-backends auto,flash \
  --profile-decode $SMOKE_ARGS --out "$OUT/decode.jsonl" > "$OUT/decode.log" 2>&1
echo "decode exit $?"
grep '"part": "decode"' "$OUT/decode.jsonl" 2>/dev/null || tail -20 "$OUT/decode.log"

echo "== (b) finetune stage code path, LoRA r=16 all linear, keep_activations 20"
timeout ${FINETUNE_TIMEOUT:-210} python3 benchmarks/finetune_scale_check.py --base "$BASE" --length 32768 --steps 3 \
  --keep-activations 20 --workdir /tmp/finetune_scale $SMOKE_ARGS --out "$OUT/finetune.jsonl" > "$OUT/finetune.log" 2>&1
echo "finetune exit $?"
grep '"part": "finetune' "$OUT/finetune.jsonl" 2>/dev/null || tail -20 "$OUT/finetune.log"
