"""Why does a training-free method miss 90% passkey at 2x the window? Probe its parameters (issue 13).

Each spec is one extended model of the embedded base, built with the pipeline's own ``make_extended_model``
(so every key and default is the one ``params.yaml`` would give). For each spec and length:

- passkey: 5 depths x ``--samples`` prompts, the same prompts the headline scores (seed 1234, independent
  layouts), teacher-forced, with a 95% Wilson interval and accuracy by depth;
- perplexity of one long window;
- ``critical_reach`` (``longctx.rope.critical_reach``): how far the method stretches the RoPE dimensions that
  never turned a full period in the native window (arXiv 2310.05209, Sec. 3), read from the model's own rotary
  embedding after the length ran (dynamic NTK's frequencies depend on it); none for SelfExtend;
- ``failures``: for the first ``--failures`` wrong answers, what greedy decoding says instead (answer length
  tokens), with ``digits_in_place`` and ``same_digits`` (the right digits in another order: the symptom of
  positions that no longer order neighbouring tokens, e.g. SelfExtend's groups).

Spec: ``NAME=METHOD[@TARGET][:KEY=VALUE,...]``, KEY a key of ``methods.<METHOD>`` in params.yaml:

    python benchmarks/trainfree_probe.py --out /tmp/probe.jsonl --lengths 8192,16384,32768 --samples 10 \\
        --specs "ntk-s4=ntk ntk-s8=ntk@65536 se-g5-w1024=selfextend:window=1024 se-g3-w2048=selfextend:group_size=3,window=2048"

Prints a table; one JSON line per (spec, length) goes to ``--out``.
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
import yaml  # noqa: E402

from longctx.base_model import materialize_base_model  # noqa: E402
from longctx.evaluation.passkey import generate_passkey  # noqa: E402
from longctx.evaluation.perplexity import generate_perplexity, token_nll  # noqa: E402
from longctx.evaluation.scoring import greedy_generate, score_samples  # noqa: E402
from longctx.evaluation.metric_key import MetricKey  # noqa: E402
from longctx.evaluation.suite import accuracy_metrics  # noqa: E402
from longctx.modeling import load_model, load_tokenizer, make_extended_model, native_record, rotary_embedding  # noqa: E402
from longctx.rope import critical_reach  # noqa: E402

DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)


def parse_spec(spec: str, default_target: int) -> tuple[str, str, int, dict]:
    """``NAME=METHOD[@TARGET][:KEY=VALUE,...]`` -> (name, method, target, params)."""
    if "=" not in spec.split(":")[0]:
        raise ValueError(f"--specs: {spec!r} is not NAME=METHOD[@TARGET][:KEY=VALUE,...]")
    name, rest = spec.split("=", 1)
    head, _, kv = rest.partition(":")
    method, _, target = head.partition("@")
    params = {}
    for item in filter(None, kv.split(",")):
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    return name, method, int(target) if target else default_target, params


def failure_record(tokenizer, model, sample) -> dict:
    got_ids = greedy_generate(model, sample.input_ids, len(sample.answer_ids))
    got = tokenizer.decode(got_ids).strip()
    expected = sample.answer.strip()
    return {"depth": sample.depth, "needle_depth": round(sample.meta.get("needle_depth", sample.depth), 3),
            "expected": expected, "got": got,
            "digits_in_place": sum(a == b for a, b in zip(expected, got)),
            "same_digits": sorted(expected) == sorted(got[:len(expected)]) and expected != got[:len(expected)]}


def measure(model, tokenizer, length: int, samples: int, batch_size: int, chat: bool, failures: int = 0) -> dict:
    """Passkey (5 depths x ``samples``, 95% Wilson interval, by depth), perplexity of one window, failures."""
    items = [s for d in DEPTHS for s in generate_passkey(tokenizer, length, d, samples, 1234, chat)]
    correct = score_samples(model, items, batch_size, desc=f"passkey {length}")
    acc = accuracy_metrics(items, correct)  # the pipeline's cells: accuracy, Wilson bounds, per depth
    cell = MetricKey("passkey", length)
    by_depth = {str(d): acc[MetricKey("passkey", length, d).format()] for d in DEPTHS}
    wrong = [s for c, s in zip(correct, items) if not c][:failures]
    window = generate_perplexity(tokenizer, length, 1234)[0]
    nll = token_nll(model, torch.tensor([window.input_ids], device=next(model.parameters()).device))
    return {"passkey": acc[cell.format()], "n": acc[cell.with_stat("n").format()],
            "lo": round(acc[cell.with_stat("lo").format()], 3), "hi": round(acc[cell.with_stat("hi").format()], 3),
            "by_depth": by_depth, "ppl": round(math.exp(nll.mean().item()), 3),
            "failures": [failure_record(tokenizer, model, s) for s in wrong]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", required=True, help="space-separated NAME=METHOD[@TARGET][:KEY=VALUE,...]")
    ap.add_argument("--work", default="/tmp/trainfree_probe", help="folder for the base and extended models")
    ap.add_argument("--lengths", default="8192,16384,32768")
    ap.add_argument("--target", type=int, default=32768, help="target_length of specs without @TARGET")
    ap.add_argument("--samples", type=int, default=10, help="passkey samples per depth (5 depths)")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--failures", type=int, default=6, help="wrong answers per cell decoded greedily")
    ap.add_argument("--chat", action="store_true", help="chat template on the prompts (the pipeline's default: off)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    specs = [parse_spec(s, args.target) for s in args.specs.split()]
    work = Path(args.work)
    base = work / "base"
    if not (base / "native.json").exists():
        materialize_base_model("embedded", base)
    native = native_record(base)["native_window"]
    tokenizer = load_tokenizer(base)
    base_model = load_model(base)
    base_inv_freq = rotary_embedding(base_model).inv_freq.clone()
    del base_model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, native window {native}, "
          f"{len(DEPTHS)} x {args.samples} passkey prompts a length, chat template {'on' if args.chat else 'off'}",
          flush=True)
    rows = []
    for name, method, target, params in specs:
        path = work / name
        ext = make_extended_model(base, path, method, params, target)
        model = load_model(path)
        for length in lengths:
            t0 = time.perf_counter()
            row = {"spec": name, "method": method, "target": target, "params": ext.params, "length": length,
                   "chat": args.chat,
                   **measure(model, tokenizer, length, args.samples, args.batch_size, args.chat, args.failures)}
            rotary = rotary_embedding(model)  # after the length ran: dynamic NTK's frequencies are its own
            reach = None if method == "selfextend" or rotary is None else critical_reach(base_inv_freq,
                                                                                       rotary.inv_freq, native)
            row["critical_reach"] = None if reach is None else round(reach)  # None: no pair is critical
            row.update(seconds=round(time.perf_counter() - t0, 1), device=device)
            rows.append(row)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "failures"}), flush=True)
            for fail in row["failures"]:
                print(f"    wrong at depth {fail['needle_depth']}: expected {fail['expected']!r}, got {fail['got']!r}")
        del model
    print("\n| spec | " + " | ".join(f"passkey {n}" for n in lengths) + " | "
          + " | ".join(f"ppl {n}" for n in lengths) + " | critical reach |")
    print("|---|" + "---:|" * (2 * len(lengths) + 1))
    for name, *_ in specs:
        cells = {r["length"]: r for r in rows if r["spec"] == name}
        pk = [f"{cells[n]['passkey']:.0%} [{cells[n]['lo']:.0%}-{cells[n]['hi']:.0%}]" for n in lengths]
        pp = [f"{cells[n]['ppl']:.2f}" for n in lengths]
        reach = cells[lengths[-1]]["critical_reach"]
        print(f"| {name} | " + " | ".join(pk + pp) + f" | {reach if reach is not None else '-'} |")


if __name__ == "__main__":
    main()
