"""Stage prepare: long-dialog SFT data (train.jsonl), its data card (JSON) and a length histogram (PNG)."""

import argparse
from pathlib import Path

from longctx.data import plot_length_histogram, prepare_sft_data
from longctx.io import atomic_write_json
from longctx.modeling import load_tokenizer
from longctx.params import stage_params

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokenizer", type=Path, required=True, help="model folder whose tokenizer to use")
    ap.add_argument("--out", type=Path, required=True, help="folder for train.jsonl")
    ap.add_argument("--card", type=Path, required=True, help="data card summary (JSON metrics)")
    ap.add_argument("--plot", type=Path, required=True, help="length histogram (PNG)")
    args = ap.parse_args()
    p = stage_params()
    card = prepare_sft_data(p.data, load_tokenizer(args.tokenizer), args.out)
    atomic_write_json(args.card, card["summary"])
    plot_length_histogram(card["lengths_by_source"], args.plot)
    print(f"prepare: {card['summary']}")
