#!/usr/bin/env bash
# The pipeline's own stages at real scale on the GPU host (issue 14): every stage of dvc.yaml, in order, run by
# its own `cmd` on a random-weight Mistral-7B-v0.3 shape (`model.name_or_path: shape:mistral-7b`, native window
# 32k): YaRN to 128k, LoRA r=16 on all linear layers at 32k with the fast settings of docs/hardware-guide.md
# (selective checkpointing, 20 layers kept, Liger, fused CE, cuDNN attention), then evaluation of the base and
# the extended model at 64k and 128k. Prints each stage's wall time; the finetune stage logs peak memory per
# step (metrics/train.json, dvclive) and the evaluate stage prints the peak GPU memory of its run.
#
# Runs in a scratch copy (/tmp/stages_8b) so it can share a call with scripts that use models/ of the repo.
# Needs the embedded GGUF stood up by benchmarks/gpu_setup.sh (the shape's tokenizer is the embedded one)
# and the wheels of .whl/ (chitchat-dataset for the data, liger-kernel). About 4 minutes on one H200.
#
#   source benchmarks/gpu_setup.sh && bash benchmarks/gpu_host_stages_8b.sh     # results: $OUT/stages_8b.*
# SMOKE=1 runs the same stages on the CPU with the tiny shape and short lengths (checks the script only).
set -uo pipefail
OUT=${OUT:-/tmp/stages_8b_out}
WORK=${WORK:-/tmp/stages_8b}
SHAPE=${SHAPE:-shape:mistral-7b}
FT_SEQ=${FT_SEQ:-32768}   # the LoRA step's length; shorter ones train with full checkpointing (memory not measured)
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"
cp -r dvc.yaml params.yaml longctx stages tools "$WORK"/ && cd "$WORK" || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1

python3 - "$SHAPE" "${SMOKE:-}" "$FT_SEQ" <<'EOF'
import sys
import yaml

smoke = bool(sys.argv[2])
p = yaml.safe_load(open("params.yaml"))
p["model"]["name_or_path"] = sys.argv[1]
p["method"], p["target_length"], p["recipe"] = "yarn", 131072, "none"
p["data"].update(num_samples=4, max_tokens=32768, min_tokens=1024, embedded_min_fraction=0.9)
p["train"].update(steps=3, mode="lora", seq_len=32768, lr=1e-4, gradient_checkpointing="selective",
                  keep_activations=20, liger=True, fused_ce=True, sdpa_backend="cudnn")
if int(sys.argv[3]) != 32768:
    p["train"].update(seq_len=int(sys.argv[3]), keep_activations=0)
    p["data"]["max_tokens"] = int(sys.argv[3])
p["train"]["lora"].update(r=16, alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"])
e = p["eval"]
e["lengths"] = [65536, 131072]
e["passkey"].update(lengths=None, samples=1, depths=[0.5])
e["perplexity"].update(buckets=4, lengths=[65536])  # the perplexity text holds 119,513 tokens (eighth run)
if smoke:  # the tiny shape on the CPU: short lengths, no CUDA-only kernels
    p["target_length"] = 4096
    p["data"].update(max_tokens=512, min_tokens=32)
    p["train"]["seq_len"] = 512
    p["train"].update(liger=False, fused_ce=False, sdpa_backend="auto", keep_activations=0)
    e["lengths"] = [1024]
    e["perplexity"]["lengths"] = [1024]
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)

from longctx.params import load_params  # the run must not die on a bad key halfway
load_params("params.yaml")
print("params: ok")
EOF
[ $? -eq 0 ] || exit 1

stages=$(python3 -c "import yaml; print(' '.join(yaml.safe_load(open('dvc.yaml'))['stages']))")
for s in $stages; do
  cmd=$(python3 -c "import sys, yaml; print(yaml.safe_load(open('dvc.yaml'))['stages'][sys.argv[1]]['cmd'])" "$s")
  cmd=${cmd/#python /python3 }
  t0=$SECONDS
  echo "== stage $s: $cmd"
  bash -c "$cmd" 2>&1 | grep -v "it/s\]\|s/it\]\|Loading weights\|UserWarning\|warnings.warn"
  rc=${PIPESTATUS[0]}
  printf '{"stage": "%s", "rc": %d, "seconds": %d}\n' "$s" "$rc" "$((SECONDS - t0))" \
    | tee -a "$OUT/stages_8b.jsonl"
  [ "$rc" -eq 0 ] || break
done
python3 - <<'EOF' > "$OUT/stages_8b.metrics.json"
import json
from pathlib import Path

out = {}
for f in ["metrics/data.json", "metrics/train.json", "metrics/eval_base.json", "metrics/eval_extended.json"]:
    if Path(f).exists():
        out[f] = json.loads(Path(f).read_text())
for f in sorted(Path("metrics/train").rglob("*")):  # dvclive: per-step loss, tokens/s, peak memory
    if f.is_file() and f.suffix in (".json", ".tsv"):
        out[str(f)] = f.read_text()
print(json.dumps(out, indent=1))
EOF
echo "written: $OUT/stages_8b.jsonl $OUT/stages_8b.metrics.json"
