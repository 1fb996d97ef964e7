#!/usr/bin/env bash
# The headline comparison (issue 13) in ONE GPU-host call, through the real DVC flow: one commit of the
# evaluation settings, the base model evaluated once (`dvc repro evaluate_base` + committed dvc.lock: every
# experiment finds the stage unchanged and skips it), every method queued with its paper recipe (`dvc exp run --queue`)
# in priority order, the queue run in parallel under its own deadline, then `dvc exp show --json` and
# tools/report.py. Whatever finished is saved under $OUT even when the time runs out. docs/headline.md.
#
#   source benchmarks/gpu_setup.sh && bash benchmarks/gpu_host_headline.sh     # GPU host, OUT set by the tool
#   HEADLINE_TINY=1 OUT=/tmp/headline_out bash benchmarks/gpu_host_headline.sh   # CPU check: 512/1024, 6 experiments
#   HEADLINE_DRY=1 bash benchmarks/gpu_host_headline.sh                          # validate the GPU params, run nothing
#
# It commits (params, dvc.lock) in the repository it runs in: run it on the device's copy or in a scratch
# clone (`git clone -b <branch> . /tmp/x`), never in a checkout you work in (a dry run commits nothing).
#
# Evaluation (committed once): target 32768; lengths 8k/16k/32k; passkey 5 depths x 10 = 50 prompts per
# length (95% Wilson intervals); perplexity by position (4 buckets); eval.batch_size 10 (one depth's prompts).
# Training: every trained method sees 96 sequences (3 steps x batch 1 x grad_accum 32: the issue's
# "about 100 samples"); PI/YaRN/PoSE's recipe batch of 64 is cut to 32 for that; warm-up 0 (3 steps).
# Budget sweep (data-efficiency plot): abf, entropy_abf, yarn, cream, pose at 0 (training-free) and
# 24 sequences (3 steps x grad_accum 8), plus the 96 of the headline run: 3 budgets per method.
#
# Knobs (environment): HEADLINE_JOBS (parallel experiments, default 5), HEADLINE_SAMPLES (passkey
# samples per depth, default 10; 6 = 30 per length, the floor for the 32k cell), HEADLINE_ONLY ("name
# name ...": queue only these, e.g. a second call for the budget-24 points; join the calls' JSON files
# with tools/report.py --exp-json a.json b.json), HEADLINE_BUDGET_S (the whole script, default 510 s),
# HEADLINE_KEEP=1 (at the deadline leave the running and queued experiments to the next call instead of killing
# them: DVC's workers are daemons and go on while the machine stays warm), HEADLINE_RESUME=1 (the next call on the
# same warm host: back to the earlier call's commit, queue again only what is neither finished, running nor
# queued, then wait for the queue; the eighth run lost the experiments its deadline killed; without HEADLINE_ONLY
# it takes the earlier call's).
#
# Cost estimate, one H200, not measured (135M model, N = 135M, L = 30, d = 576). FLOPs: 6NT + 12LdT^2 per
# trained sequence, 2NT + 4LdT^2 per prefill (causal attention does about half). Measured on the H200/H100
# (docs/RESULTS.md): 32k prefill 0.136 s, SelfExtend 0.435 s ("SelfExtend cost"); full FT ~45-66k tok/s
# at 16-32k with selective checkpointing (issue 6 and fifth run tables), ~35-42k at 8k (sixth run:
# 200 x 8k in 39 s). Evaluation of one experiment: 50 x (0.136 + ~0.04 + ~0.012) s = ~9.4 s of passkey
# prefill, 3 perplexity windows, one greedy check, ~3 s model load.
#
#   part                                        GPU s each  count  GPU s  note
#   base_model + eval_samples + evaluate_base        ~60       1     60  serial, before the queue (CPU-heavy)
#   evaluation (150 prompts + 3 ppl windows)         ~10      21    210
#   evaluation, SelfExtend                           ~30       1     30  3.2x SDPA, slower greedy decode
#   train 96 x ~30k-token documents (pi, yarn)       ~55       2    110  ~2.9M tokens at ~55k tok/s
#   train 96 dialogues of 10-31k (abf, entropy_abf)  ~38       2     76  ~1.9M tokens
#   train 96 x 8k (cream, pose, randpos)             ~22       3     66  ~0.8M tokens, launch-bound: overlaps
#   train 24 sequences (5 budget-sweep points)        ~9       5     46
#   GPU-busy, one at a time                                            ~600  (queue part ~540)
#   Per experiment ~40 s outside the GPU (7 stages' Python start-up, prepare's tokenisation, model
#   load/save, DVC's checkout and commit): 22 x 40 = ~880 s, over 5 workers ~180 s, hidden under GPU work.
#   Fixed: git + params ~15 s, base evaluation ~60 s, queueing 22 x ~1.3 s = ~30 s, results ~45 s = ~150 s.
#
# So ~360 s are left for a queue needing ~450-540 s of GPU (the 8k parts overlap): expect every
# training-free and headline-trained experiment and most budget-0 points; the budget-24 points, last
# in the queue, are the first a timeout loses (rerun them with HEADLINE_ONLY in a second call).
# Memory, 5 at once: evaluation at 32k, batch 10, bf16, SDPA/flash (no T x T matrix; passkey keeps the
# last positions' logits only, perplexity runs the head in 2k-token chunks): ~7.5 GB KV cache (23 KB per
# token x 32k x 10) + ~3 GB MLP buffers = ~11 GB; full FT at 32k, selective checkpointing, train.fused_ce
# (no 32k x 49152 float32 logits): ~6-10 GB, + 2 GB weights and AdamW state. Five at once: < 60 GB of 139 GiB.
set -uo pipefail
T0=$(date +%s)
TINY=${HEADLINE_TINY:-0}
DRY=${HEADLINE_DRY:-0}
KEEP_RUNNING=${HEADLINE_KEEP:-0}
RESUME=${HEADLINE_RESUME:-0}
BUDGET_S=${HEADLINE_BUDGET_S:-510}   # the whole script, seconds (the device call allows 600)
OUT=${OUT:-/tmp/headline_out}
mkdir -p "$OUT"
LOG="$OUT/headline.log"
exec > >(tee -a "$LOG") 2>&1
elapsed() { echo $(( $(date +%s) - T0 )); }
say() { echo "[headline $(elapsed)s] $*"; }

if [ "$TINY" = 1 ] || [ "$DRY" = 1 ]; then
  export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  JOBS=${HEADLINE_JOBS:-2}
else
  [ -n "${PYTHONPATH:-}" ] || source benchmarks/gpu_setup.sh
  JOBS=${HEADLINE_JOBS:-5}
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
# dvc.yaml's stages call `python`, and DVC's queue starts its workers as `dvc exp queue-worker` found on
# PATH (dvc/repo/experiments/queue/celery.py): both must be there and must be this python3, whose
# PYTHONPATH holds DVC and longctx (pip --target puts no `dvc` script on PATH). Shims first on PATH.
SHIMS=/tmp/headline_shims
mkdir -p "$SHIMS" && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > "$SHIMS/python"
chmod +x "$SHIMS/python"
if ! command -v dvc >/dev/null 2>&1; then
  printf '#!/bin/sh\nexec %s -m dvc "$@"\n' "$(command -v python3)" > "$SHIMS/dvc" && chmod +x "$SHIMS/dvc"
fi
export PATH=$SHIMS:$PATH
DVC="python3 -m dvc"
DVC_VERSION=$($DVC --version 2>&1) || { say "DVC is not importable (PYTHONPATH=$PYTHONPATH): $DVC_VERSION"; exit 1; }
say "DVC $DVC_VERSION, $(python3 -c 'import torch; print("torch", torch.__version__)'), $JOBS experiments at a time"
export GIT_AUTHOR_NAME=gpu-host GIT_AUTHOR_EMAIL=gpu-host@localhost GIT_COMMITTER_NAME=gpu-host \
  GIT_COMMITTER_EMAIL=gpu-host@localhost
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}   # JOBS experiments share the host's 16 cores

# --------------------------------------------------------------------------- settings
if [ "$TINY" = 1 ]; then
  STEPS=1; GA=2; GA_SMALL=1       # budgets 2 and 1 (and 0)
else
  STEPS=3; GA=32; GA_SMALL=8      # budgets 96 and 24 (and 0)
fi

# Queue, in priority order: "name override ..." (each override a `-S key=value`).
EXPS=()
add() { EXPS+=("$*"); }
trained() {  # trained NAME METHOD RECIPE GRAD_ACCUM [OVERRIDE ...]: steps capped; a recipe's warm-up (pi, yarn, pose) 0
  local warmup=""
  case $3 in pi|yarn|pose) warmup="recipes.$3.train.warmup_steps=0" ;; esac
  add "$1 method=$2 recipe=$3 recipes.$3.train.steps=$STEPS recipes.$3.train.grad_accum=$4 $warmup ${*:5}"
}
if [ "$TINY" = 1 ]; then
  add "none method=none train.steps=0"
  trained abf-$((STEPS * GA)) abf entropy_abf "$GA"
  trained cream-$((STEPS * GA)) cream cream_chat "$GA"
  add "abf-0 method=abf train.steps=0"
  add "cream-0 method=cream train.steps=0"
  trained abf-$((STEPS * GA_SMALL)) abf entropy_abf "$GA_SMALL"
else
  for m in none selfextend ntk dynamic_ntk llama3; do add "$m method=$m train.steps=0"; done
  B=$((STEPS * GA)); b=$((STEPS * GA_SMALL))
  trained abf-$B abf entropy_abf "$GA"
  trained entropy_abf-$B entropy_abf entropy_abf "$GA"
  trained pi-$B pi pi "$GA"
  trained yarn-$B yarn yarn "$GA"
  # CREAM, PoSE and RandPos train on YaRN's frequencies without its temperature since the ninth run
  # (methods.<m>.attention_factor: 1): "-t1" keeps their names apart from the runs before it.
  trained cream-$B-t1 cream cream_chat "$GA"
  trained pose-$B-t1 pose pose "$GA"
  trained randpos-$B-t1 randpos pose "$GA"
  # YaRN without its attention temperature (docs/RESULTS.md, ninth run: the paper's costs in-window passkey)
  trained yarn-$B-t1 yarn yarn "$GA" methods.yarn.attention_factor=1
  add "yarn-0-t1 method=yarn train.steps=0 methods.yarn.attention_factor=1"
  # Budget 0: the method training-free (budget = steps x batch x grad_accum = 0 whatever the recipe; the
  # report draws one line per method, so recipe none is on the same line and skips preparing its data).
  for m in abf entropy_abf yarn; do add "$m-0 method=$m train.steps=0"; done
  for m in cream pose; do add "$m-0-t1 method=$m train.steps=0"; done
  trained abf-$b abf entropy_abf "$GA_SMALL"
  trained entropy_abf-$b entropy_abf entropy_abf "$GA_SMALL"
  trained yarn-$b yarn yarn "$GA_SMALL"
  trained cream-$b-t1 cream cream_chat "$GA_SMALL"
  trained pose-$b-t1 pose pose "$GA_SMALL"
  # Budget ~10^3 (32 steps x 32; the 8k recipes only: 8-24 x the 96-sequence runs' tokens). CREAM's 1024 dialogues
  # are distinct (the chitchat corpus holds 2358), PoSE's documents repeat (~400 windows of 8k: 2.6 epochs).
  STEPS=32 trained cream-1024-t1 cream cream_chat 32 recipes.cream_chat.data.num_samples=1024
  STEPS=32 trained pose-1024-t1 pose pose 32
  STEPS=32 trained randpos-1024-t1 randpos pose 32
fi

# HEADLINE_RESUME without HEADLINE_ONLY resumes the earlier call's selection, not every experiment (the eleventh run's
# resume call, written without it, queued all 27 beside an 8B job).
SELECTION=.dvc/tmp/headline_selection
if [ "$RESUME" = 1 ] && [ -z "${HEADLINE_ONLY+x}" ] && [ -s "$SELECTION" ]; then
  HEADLINE_ONLY=$(cat "$SELECTION")
fi
if [ -n "${HEADLINE_ONLY:-}" ]; then  # a subset, e.g. the budget-24 points in a second call
  KEEP=()
  for spec in "${EXPS[@]}"; do
    for name in $HEADLINE_ONLY; do [ "${spec%% *}" = "$name" ] && KEEP+=("$spec"); done
  done
  EXPS=("${KEEP[@]}")
  [ "${#EXPS[@]}" -gt 0 ] || { say "HEADLINE_ONLY=$HEADLINE_ONLY names no experiment"; exit 1; }
fi

# --------------------------------------------------------------------------- resume (HEADLINE_RESUME=1)
if [ "$RESUME" = 1 ]; then
  git rev-parse --verify -q HEAD >/dev/null 2>&1 && [ -d .dvc/tmp/exps ] || {
    say "HEADLINE_RESUME: no earlier call's repository and queue here (a fresh machine?): run without it"; exit 1; }
  # The device tool copied this session's tree over the earlier call's: back to its commit (headline params,
  # base model evaluated), so anything queued again runs what the earlier experiments ran.
  git checkout -q HEAD -- . && say "resuming the queue of $(git log -1 --format='%h %s')"
fi

# Params and the base evaluation: skipped when resuming (the earlier call did both). Not indented: heredocs.
if [ "$RESUME" != 1 ]; then
# --------------------------------------------------------------------------- repository + params
# The device tool copies files, not the repository: experiments need a commit. (`rev-parse`, not `-d .git`:
# in a git worktree .git is a file.) A dry run touches no git state.
if [ "$DRY" != 1 ] && ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git init -q && git add -A && git commit -qm "GPU host: working tree"
fi
if [ "$DRY" = 1 ]; then  # a dry run leaves params.yaml as it found it, whatever happens
  BACKUP=$(mktemp) && cp params.yaml "$BACKUP" && trap 'mv "$BACKUP" params.yaml' EXIT
fi
python3 - "$TINY" "${HEADLINE_SAMPLES:-10}" <<'EOF'
import sys
import yaml
tiny, samples = sys.argv[1] == "1", int(sys.argv[2])
p = yaml.safe_load(open("params.yaml"))
e = p["eval"]
p["target_length"] = 32768
e["lengths"] = [512, 1024] if tiny else [8192, 16384, 32768]
e["batch_size"] = 2 if tiny else 10          # one depth's prompts share a shape: one batched forward
e["passkey"].update(enabled=True, depths=[0.1, 0.5, 0.9] if tiny else [0.1, 0.3, 0.5, 0.7, 0.9],
                    samples=1 if tiny else samples, lengths=None)   # 5 x 10 = 50 per length
e["perplexity"].update(enabled=True, buckets=4, lengths=None)
p["train"]["fused_ce"] = True                 # no 32k x vocab logits in training (memory, speed); same loss
p["recipes"]["cream_chat"]["data"]["num_samples"] = 96   # only steps x grad_accum (<= 96) are ever seen
if tiny:  # every recipe at 1k tokens, a few samples, so the CPU can train it
    for r in p["recipes"].values():
        if "data" in r:
            r["data"]["num_samples"] = 4
            r["data"]["max_tokens"] = 1024
            if "min_tokens" in r["data"]:
                r["data"]["min_tokens"] = 256
        if "train" in r:
            r["train"]["seq_len"] = 1024
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
EOF
# Every experiment's params (params.yaml + its overrides) through longctx.params: a bad key stops here.
python3 - "${EXPS[@]}" <<'EOF' || { say "params validation failed"; exit 1; }
import copy, sys
import yaml
from longctx.params import apply_recipe, parse_params
from longctx.report import training_budget
base = yaml.safe_load(open("params.yaml"))
for spec in sys.argv[1:]:
    name, *overrides = spec.split()
    p = copy.deepcopy(base)
    for o in overrides:
        key, value = o.split("=", 1)
        *path, last = key.split(".")
        node = p
        for part in path:
            if part not in node:
                sys.exit(f"{name}: {key}: no such key in params.yaml")
            node = node[part]
        if last not in node:
            sys.exit(f"{name}: {key}: no such key in params.yaml")
        node[last] = yaml.safe_load(value)
    parse_params(p)
    t = apply_recipe(p)["train"]
    print(f"  {name:16s} budget {training_budget(p):4d} = {t['steps']} x {t.get('batch_size', 1)} x "
          f"{t.get('grad_accum', 1)}, seq_len {t['seq_len']}, {t['mode']}")
EOF
say "${#EXPS[@]} experiments, params valid"
[ "$DRY" = 1 ] && exit 0
git commit -qam "headline evaluation params" || true

# --------------------------------------------------------------------------- base evaluation, once
# Run in the workspace before the queue, so no parallel experiment evaluates the base model itself:
# with dvc.lock committed, each finds evaluate_base (and base_model, eval_samples) unchanged and skips it.
say "dvc repro evaluate_base"
timeout $((BUDGET_S / 3)) $DVC repro evaluate_base 2>&1 | grep --line-buffered -v "it/s\]\|s/it\]\|Loading weights\|sample/s\]"
# The tree's committed summary belongs to other params (the CPU defaults): out of this baseline commit, so
# the report does not rank it beside the experiments (it is listed as a revision without metrics).
git rm -q --cached --ignore-unmatch metrics/summary.json metrics/by_length.json && rm -f metrics/summary.json metrics/by_length.json
git add -A dvc.lock metrics 2>/dev/null; git commit -qm "base model evaluated" || true
fi  # RESUME != 1

# --------------------------------------------------------------------------- queue + run
[ "$RESUME" = 1 ] || { mkdir -p .dvc/tmp && printf '%s' "${HEADLINE_ONLY:-}" > "$SELECTION"; }
say "queueing${HEADLINE_ONLY:+ (HEADLINE_ONLY=$HEADLINE_ONLY)}"
BEFORE=$($DVC queue status 2>/dev/null)
for spec in "${EXPS[@]}"; do
  read -r name overrides <<<"$spec"
  if [ "$RESUME" = 1 ] && awk -v n="$name" '$2 == n && ($NF == "Success" || $NF == "Running" || $NF == "Queued")' \
      <<<"$BEFORE" | grep -q .; then
    continue   # finished, or still on its way, from the earlier call
  fi
  args=()
  for o in $overrides; do args+=(-S "$o"); done
  $DVC exp run --queue -n "$name" "${args[@]}" >/dev/null || say "queue failed: $name"
done
$DVC queue status | tail -n +1 | head -40
# `dvc queue start` + polling rather than `dvc exp run --run-all`: on DVC 3.67 the latter did not return
# after its workers were stopped (seen on CPU), and polling lets the script keep its own deadline.
DEADLINE=$(( T0 + BUDGET_S - 45 ))   # 45 s kept for exp show + report
count() { awk -v s="$1" '$NF == s' <<<"$STATUS" | wc -l; }
say "dvc queue start -j $JOBS; deadline in $(( DEADLINE - $(date +%s) ))s"
# The workers are daemons: started with this script's output (a pipe into tee) they would hold it open after the
# script ends, and a caller reading that output (`... | tail`) would hang until its own timeout (tenth run).
start_workers() { $DVC queue start -j "$JOBS" >>/tmp/headline_queue_workers.log 2>&1 </dev/null; tail -1 /tmp/headline_queue_workers.log; }
if [ "$RESUME" != 1 ] || grep -q "Worker status: 0 active" <<<"$($DVC queue status 2>/dev/null)"; then
  start_workers   # (resuming with workers still alive: more would oversubscribe the GPU)
fi
idle=0; restarts=0; last=""
while :; do
  sleep 10
  STATUS=$($DVC queue status 2>/dev/null)
  line="success $(count Success), failed $(count Failed), running $(count Running), queued $(count Queued)"
  [ "$line" != "$last" ] && say "$line" && last=$line
  [ $(( $(count Running) + $(count Queued) )) -eq 0 ] && break
  [ "$(date +%s)" -ge "$DEADLINE" ] && { say "deadline"; break; }
  if grep -q "Worker status: 0 active" <<<"$STATUS" && [ "$(count Running)" -eq 0 ]; then
    idle=$((idle + 1))   # experiments queued but no worker: start them again (twice at most)
    if [ "$idle" -ge 3 ] && [ "$restarts" -lt 2 ]; then
      say "no worker is running: dvc queue start again"; start_workers; idle=0; restarts=$((restarts + 1))
    fi
  else
    idle=0
  fi
done
if [ "$KEEP_RUNNING" = 1 ]; then
  say "HEADLINE_KEEP: $(count Running) running and $(count Queued) queued left to the next call (HEADLINE_RESUME=1)"
else
  $DVC queue stop --kill >/dev/null 2>&1 || true   # unfinished experiments end here
  for p in $(pgrep -f "python stages/" || true); do  # a stage the kill left behind: only ours (its cwd is our executor)
    case $(readlink "/proc/$p/cwd" 2>/dev/null) in "$PWD"/.dvc/tmp/exps/*) kill "$p" 2>/dev/null ;; esac
  done
fi

# --------------------------------------------------------------------------- results
$DVC queue status > "$OUT/queue.log" 2>&1
for name in $($DVC queue status 2>/dev/null | awk '$NF == "Failed" {print $1}'); do
  { echo "=== $name"; $DVC queue logs "$name" 2>&1 | tail -30; } >> "$OUT/queue.log"
done
# -A: every commit's experiments. A second call on the same warm host commits its settings again, and the first
# call's queued experiments that finish then belong to the first commit (the eighth run lost nine that way).
$DVC exp show --json -A > "$OUT/exp_headline.json"
rm -rf "$OUT/report"
python3 tools/report.py --exp-json "$OUT/exp_headline.json" --out "$OUT/report"
cp "$OUT/report/report.md" "$OUT/report/data_efficiency.png" "$OUT/" 2>/dev/null
tar -czf "$OUT/report.tar.gz" -C "$OUT" report && rm -rf "$OUT/report"
say "done: $(ls "$OUT" | tr '\n' ' ')"
