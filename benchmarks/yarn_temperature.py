"""Does YaRN's attention temperature cost retrieval inside the native window? (issues 12 and 13)

Training-free YaRN (and CREAM/PoSE/RandPos, which train on its frequencies) scored 0% passkey at 8k,
inside the embedded model's 8k window, while passing at 16k/32k (docs/RESULTS.md, eighth run). A CPU
probe (3 samples) pointed at the temperature. This measures it: one YaRN model (target ``--target``),
its rotary embedding's cos/sin scale set to each temperature in turn, passkey (5 depths x ``--samples``,
independent layouts) and perplexity at every length, the base model beside it.

Temperatures (YaRN, arXiv 2309.00071 Eq. 21-22: logits scaled by t^2 through cos/sin scaled by t):
    paper      0.1 ln(s) + 1 with s = target / native (what ``method: yarn`` builds: 1.1386 for s = 4)
    off        1 (YaRN's frequencies alone)
    by_length  0.1 ln(max(1, L / native)) + 1 for a prompt of L tokens: the temperature Dynamic-YaRN
               (Sec. 3.4) uses, 1 inside the window and the paper's value at the target

    python benchmarks/yarn_temperature.py --lengths 4096,8192,16384,32768 --samples 10 --out /tmp/yarn_t.jsonl

Prints a table; one JSON line per (model, temperature, length) goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.trainfree_probe import DEPTHS, measure  # noqa: E402  (one passkey + perplexity probe)
from longctx.base_model import materialize_base_model  # noqa: E402
from longctx.modeling import load_model, load_tokenizer, make_extended_model, native_record, rotary_embedding  # noqa: E402
from longctx.rope import yarn_attention_factor  # noqa: E402

def temperature(mode: str, length: int, native: int, target: int) -> float:
    if mode == "paper":
        return yarn_attention_factor(target / native)
    if mode == "off":
        return 1.0
    if mode == "by_length":
        return yarn_attention_factor(max(1.0, length / native))
    raise ValueError(f"--temperatures: unknown {mode!r}; allowed: paper, off, by_length")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/yarn_temperature", help="folder for the base and YaRN models")
    ap.add_argument("--lengths", default="4096,8192,16384,32768")
    ap.add_argument("--target", type=int, default=32768)
    ap.add_argument("--samples", type=int, default=10, help="passkey samples per depth (5 depths)")
    ap.add_argument("--temperatures", default="paper,off,by_length")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--chat", action="store_true", help="chat template on the prompts (the pipeline's default: off)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    modes = args.temperatures.split(",")
    work = Path(args.work)
    base, ext = work / "base", work / "yarn"
    if not (base / "native.json").exists():
        materialize_base_model("embedded", base)
    native = native_record(base)["native_window"]
    if not (ext / "config.json").exists():
        make_extended_model(base, ext, "yarn", {}, args.target)
    tokenizer = load_tokenizer(base)
    rows = []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, native window {native}, "
          f"target {args.target}, {len(DEPTHS)} x {args.samples} passkey prompts a length", flush=True)
    for name, path, model_modes in (("none", base, ["off"]), ("yarn", ext, modes)):
        model = load_model(path)
        rotary = rotary_embedding(model)
        for mode in model_modes:
            for length in lengths:
                t = temperature(mode, length, native, args.target) if name == "yarn" else 1.0
                rotary.attention_scaling = t  # cos and sin are multiplied by it: logits by t^2
                t0 = time.perf_counter()
                row = {"model": name, "temperature": mode, "t": round(t, 4), "length": length,
                       **measure(model, tokenizer, length, args.samples, args.batch_size, args.chat),
                       "seconds": round(time.perf_counter() - t0, 1), "device": device}
                rows.append(row)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
        del model
    print("\n| model | temperature | " + " | ".join(f"passkey {n}" for n in lengths) + " | "
          + " | ".join(f"ppl {n}" for n in lengths) + " |")
    print("|---|---|" + "---:|" * (2 * len(lengths)))
    for name, mode in [("none", "off")] + [("yarn", m) for m in modes]:
        cells = {r["length"]: r for r in rows if r["model"] == name and r["temperature"] == mode}
        pk = [f"{cells[n]['passkey']:.0%} [{cells[n]['lo']:.0%}-{cells[n]['hi']:.0%}]" for n in lengths]
        pp = [f"{cells[n]['ppl']:.2f}" for n in lengths]
        print(f"| {name} | {mode} | " + " | ".join(pk + pp) + " |")


if __name__ == "__main__":
    main()
