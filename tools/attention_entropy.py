"""Optional analysis: attention entropy by context length, base vs extended model (Entropy-ABF's observation).

Usage: python tools/attention_entropy.py [--lengths 2048,4096,8192] [--last 32] [--dtype auto]

Reads models/base and models/extended (with their extension in force), runs the first N tokens of
the perplexity text (tokenised with the base tokenizer) for each length N, and writes the mean
attention entropy per layer of the last queries to metrics/attention_entropy.json and
plots/attention_entropy.png. See longctx/entropy_analysis.py.
"""

import argparse
from pathlib import Path

from longctx.entropy_analysis import entropy_by_length, plot_entropy
from longctx.io import atomic_write_json
from longctx.modeling import load_model, load_tokenizer, read_extension


def growth_per_doubling(res: dict) -> list[float]:
    """Per layer, the least-squares slope of entropy against log2(length): nats gained per doubling."""
    import math

    xs = [math.log2(n) for n in res["lengths"]]
    if len(xs) < 2:
        return [0.0] * res["num_layers"]
    mx = sum(xs) / len(xs)
    var = sum((x - mx) ** 2 for x in xs)
    out = []
    for layer in range(res["num_layers"]):
        ys = [res["per_layer"][str(n)][layer] for n in res["lengths"]]
        my = sum(ys) / len(ys)
        out.append(round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var, 6))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="2048,4096,8192", help="comma-separated context lengths (tokens)")
    ap.add_argument("--last", type=int, default=32, help="average over the last this many queries of each length")
    ap.add_argument("--dtype", default="auto", help="model dtype: auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    ap.add_argument("--first-layers", type=int, default=2,
                    help="layer group split for the plot (layers 0..k-1 vs the rest)")
    ap.add_argument("--metrics", default="metrics/attention_entropy.json")
    ap.add_argument("--plot", default="plots/attention_entropy.png")
    args = ap.parse_args()
    lengths = sorted({int(x) for x in args.lengths.split(",") if x.strip()})
    if not lengths or min(lengths) < 2:
        ap.error(f"--lengths: need lengths >= 2, got {args.lengths!r}")

    tokenizer = load_tokenizer("models/base")
    results = {}
    for name in ("base", "extended"):
        model = load_model(f"models/{name}", dtype=args.dtype)
        results[name] = entropy_by_length(model, tokenizer, lengths, last=args.last)
        results[name]["growth_per_doubling"] = growth_per_doubling(results[name])
        print(f"attention_entropy {name}: mean by length {results[name]['mean']}")
        del model

    ext = read_extension(Path("models/extended"))
    out = {
        "extension": {"method": ext.method, "native_window": ext.native_window,
                      "attention": ext.attention} if ext else None,
        "models": results,
    }
    atomic_write_json(args.metrics, out)
    plot_entropy(results, args.plot, first_layers=args.first_layers)
    print(f"attention_entropy: wrote {args.metrics} and {args.plot}")


if __name__ == "__main__":
    main()
