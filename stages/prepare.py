"""Stage prepare: long-dialog SFT data to data/sft, data card to metrics/data.json, histogram PNG."""

from pathlib import Path

from longctx.data import plot_length_histogram, prepare_sft_data
from longctx.io import atomic_write_json
from longctx.modeling import load_tokenizer
from longctx.params import stage_params

if __name__ == "__main__":
    p = stage_params()
    card = prepare_sft_data(p.data, load_tokenizer("models/base"), Path("data/sft"))
    atomic_write_json("metrics/data.json", card["summary"])
    plot_length_histogram(card["lengths_by_source"], Path("plots/data_lengths.png"))
    print(f"prepare: {card['summary']}")
