"""The finetune stage's own code path at a real shape: tokens/s and peak memory per optimizer step (issue 14).

Unlike ``benchmarks/scale_8b.py`` (which rebuilds the setup around ``trainable_model``), this runs
``longctx.training.recipe.finetune`` itself -- Accelerate, ``build_trainable`` (bf16 frozen weights under
bf16 autocast for LoRA, float32 adapters), ``train.keep_activations``, the batching, the optimizer step, the
adapter written at the end -- on a random-weight model of a named shape (``longctx.shapes``: a config-only
folder, weights made on the GPU):

1. ``materialize_shape('shape:<shape>')`` writes the base folder (or ``--base`` names one written before: the GPU
   host has no GGUF for the tokenizer), ``make_extended_model`` the extended one (``--method``, for ``--target``
   tokens), as the base_model and extend stages do.
2. ``--steps`` rows of ``--length`` random tokens (labels = inputs) become the SFT file.
3. ``finetune`` trains LoRA r=16 on all linear layers; ``on_step`` records each step's wall time (the
   recipe synchronises the device at the end of every step) and peak memory (reset at each step's start).

One JSON line per step and a summary line (steps after the first: the first pays for kernel selection)
go to stdout and ``--out``. ``--smoke``: the ``tiny`` shape on the CPU (checks the script, measures nothing).

Usage (GPU host): python benchmarks/finetune_scale_check.py --keep-activations 20 --out $OUT/finetune.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def emit(out, **row):
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


def write_sft(path: Path, rows: int, length: int, vocab: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(rows):
            ids = [rng.randrange(vocab) for _ in range(length)]
            f.write(json.dumps({"input_ids": ids, "labels": ids}) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama3.1-8b")
    ap.add_argument("--length", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--keep-activations", type=int, default=20, help="train.keep_activations")
    ap.add_argument("--checkpointing", default="selective", help="train.gradient_checkpointing")
    ap.add_argument("--backend", default="cudnn", help="train.sdpa_backend")
    ap.add_argument("--no-liger", dest="liger", action="store_false")
    ap.add_argument("--method", default="none")
    ap.add_argument("--target", type=int, default=None, help="extension target length (default --length)")
    ap.add_argument("--base", default=None,
                    help="an existing config-only shape folder (the base_model stage's output for shape:<name>); "
                         "default: write one with materialize_shape (needs the embedded tokenizer's GGUF)")
    ap.add_argument("--workdir", default=None, help="where the model folders go (default: a temporary folder)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny shape on the CPU: checks the script, measures nothing")
    args = ap.parse_args()
    if args.smoke:
        args.shape, args.length, args.liger, args.backend = "tiny", min(args.length, 64), False, "auto"
        args.keep_activations = min(args.keep_activations, 1)
    elif not torch.cuda.is_available():
        sys.exit("finetune_scale_check: needs a CUDA GPU (or --smoke)")

    from longctx.modeling import make_extended_model
    from longctx.params import TrainParams, build
    from longctx.shapes import materialize_shape
    from longctx.training.recipe import finetune

    work = Path(args.workdir or tempfile.mkdtemp(prefix="finetune_scale_"))
    base, extended, out_dir = work / "base", work / "extended", work / "finetuned"
    if args.base:
        base = Path(args.base)
        args.shape = json.loads((base / "shape.json").read_text())["shape"]
    else:
        materialize_shape(f"shape:{args.shape}", base)
    make_extended_model(base, extended, args.method, {}, args.target or args.length)
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    write_sft(work / "train.jsonl", args.steps, args.length, vocab)

    train = {"steps": args.steps, "mode": "lora", "seq_len": args.length, "lr": 1e-4, "warmup_steps": 0,
             "scheduler": "constant", "gradient_checkpointing": args.checkpointing,
             "keep_activations": args.keep_activations, "fused_ce": True, "liger": args.liger,
             "sdpa_backend": args.backend,
             "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": TARGETS}}
    tp = build(TrainParams, train, "train")
    cuda = torch.cuda.is_available() and not args.smoke
    emit(args.out, device=torch.cuda.get_device_name(0) if cuda else "cpu", torch=torch.__version__,
         shape=args.shape, method=args.method, length=args.length, train=train, command=" ".join(sys.argv))

    marks = []

    def on_step(step: int, loss: float) -> None:
        now = time.perf_counter()
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        marks.append(now)
        seconds = now - (marks[-2] if len(marks) > 1 else start)
        emit(args.out, part="finetune_step", step=step, loss=round(loss, 4), s=round(seconds, 3),
             tok_s=round(args.length / seconds), peak_gib=round(peak / 2**30, 2))

    start = time.perf_counter()  # the first step's time includes loading the model and building the setup
    summary = finetune(extended, work / "train.jsonl", out_dir, tp, "auto", checkpoint_dir=work / "checkpoints",
                       on_step=on_step)
    timed = [b - a for a, b in zip(marks, marks[1:])]
    row = {"part": "finetune", "shape": args.shape, "length": args.length, "keep_activations": args.keep_activations,
           "steps": args.steps, "loss_last": summary["loss_last"],
           "adapter_files": sorted(p.name for p in out_dir.iterdir())}
    if timed:
        row.update(s_per_step=round(sum(timed) / len(timed), 3), tok_s=round(args.length * len(timed) / sum(timed)))
    if cuda:
        row["peak_gib_run"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    emit(args.out, **row)


if __name__ == "__main__":
    main()
