"""Why PI-family fine-tuning lost passkey retrieval: the reference loop beside ours, and the data.

Each condition fine-tunes the embedded model (full fine-tuning, bf16 autocast, cosine schedule) and
scores passkey retrieval by greedy generation at 4k/8k/16k (plain completion; the needle at depths
0.1/0.5/0.9). Conditions are ``impl:method:data[:key=value...]``:

    impl    ref  = benchmarks/pi_reference_finetune.py (plain transformers, linear RoPE)
            ours = longctx's finetune loop on models made by make_extended_model
            none = training-free (the extended model as it is)
    method  pi | cream | pose | randpos | yarn (cream/pose/randpos with ``freq=`` pick the frequency)
    data    sft  = embedded recall dialogues, loss on assistant replies (the pipeline's default data)
            docs = embedded documents, loss on every token (longctx/data/documents.py)
    keys    lr=, steps=, freq=, target=

    python benchmarks/pi_family_check.py --base models/base --out /tmp/pi_family.json \\
        ref:pi:sft ours:pi:sft ours:pi:docs ours:cream:sft ours:cream:docs

Results (losses, passkey per length, seconds) are appended to ``--out`` after every condition.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from longctx.data import prepare_sft_data  # noqa: E402
from longctx.evaluation.passkey import generate_passkey  # noqa: E402
from longctx.evaluation.scoring import greedy_answer_correct  # noqa: E402
from longctx.modeling import load_finetuned, load_model, load_tokenizer, make_extended_model, native_record  # noqa: E402
from longctx.params import TrainParams  # noqa: E402
from longctx.training import finetune  # noqa: E402

DATA = {
    "sft": {"type": "embedded_chitchat"},
    "docs": {"type": "embedded_documents"},
}


def parse_condition(text: str, defaults: dict) -> dict:
    impl, method, data, *rest = text.split(":")
    cond = {"name": text, "impl": impl, "method": method, "data": data, **defaults}
    for kv in rest:
        k, v = kv.split("=")
        cond[k] = v if k == "freq" else float(v) if k == "lr" else int(v)
    return cond


def passkey_scores(model, tokenizer, lengths, samples: int) -> dict:
    out = {}
    for length in lengths:
        items = [s for d in (0.1, 0.5, 0.9) for s in generate_passkey(tokenizer, length, d, samples, 1234, False)]
        out[str(length)] = round(sum(greedy_answer_correct(model, s) for s in items) / len(items), 3)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("conditions", nargs="+")
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--work", default="/tmp/pi_family")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--target", type=int, default=32768)
    ap.add_argument("--num-samples", type=int, default=100)
    ap.add_argument("--lengths", default="4096,8192,16384")
    ap.add_argument("--passkey-samples", type=int, default=4, help="per depth (3 depths)")
    args = ap.parse_args()
    base, work = Path(args.base), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(base)
    lengths = [int(x) for x in args.lengths.split(",")]
    defaults = {"lr": args.lr, "steps": args.steps, "target": args.target, "freq": None, "seq_len": args.seq_len}
    results = []
    for text in args.conditions:
        c = parse_condition(text, defaults)
        t0 = time.perf_counter()
        data_file = work / f"data_{c['data']}_{c['seq_len']}" / "train.jsonl"
        card = None
        if c["impl"] != "none" and not data_file.exists():
            card = prepare_sft_data({"seed": 0, "num_samples": args.num_samples, "max_tokens": c["seq_len"],
                                     "sources": [DATA[c["data"]]]}, tokenizer, data_file.parent)["summary"]
            print(f"data {c['data']}: {card['num_samples']} samples, {card['total_tokens']} tokens, "
                  f"loss-token share {card['loss_token_share']}", flush=True)
        params = {"frequency": c["freq"]} if c["freq"] else {}
        ext_dir = work / f"ext_{c['method']}_{c['freq']}_{c['target']}"
        if not ext_dir.exists():
            make_extended_model(base, ext_dir, c["method"], params, c["target"])
        out_dir = work / f"run_{len(results)}"
        summary: dict = {}
        if c["impl"] == "ref":
            assert c["method"] == "pi", "the reference loop is plain linear RoPE (PI)"
            from pi_reference_finetune import main as reference

            summary = reference(["--base", str(base), "--data", str(data_file), "--out", str(out_dir),
                                 "--factor", str(c["target"] / native_record(base)["native_window"]), "--steps", str(c["steps"]),
                                 "--seq-len", str(c["seq_len"]), "--lr", str(c["lr"])])
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32, trust_remote_code=False).to("cuda" if torch.cuda.is_available() else "cpu").eval()
        elif c["impl"] == "ours":
            tp = TrainParams(steps=c["steps"], mode="full", seq_len=c["seq_len"], lr=c["lr"], scheduler="cosine")
            summary = finetune(ext_dir, data_file, out_dir, tp, checkpoint_dir=work / "ckpt")
            model = load_finetuned(out_dir, ext_dir)
        else:
            model = load_model(ext_dir)
        train_s = time.perf_counter() - t0
        scores = passkey_scores(model, tokenizer, lengths, args.passkey_samples)
        row = {**c, "train": summary, "passkey": scores, "seconds": round(time.perf_counter() - t0, 1),
               "train_seconds": round(train_s, 1)}
        if card:
            row["data_card"] = {k: card[k] for k in ("num_samples", "total_tokens", "label_tokens", "loss_token_share")}
        results.append(row)
        print(json.dumps({k: row[k] for k in ("name", "train", "passkey", "seconds")}), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
