"""Stage prepare: long-dialog SFT data (train.jsonl), its data card (JSON) and a length histogram (PNG)."""

from longctx.cli import stage_args
from longctx.data import plot_length_histogram, prepare_sft_data
from longctx.io import atomic_write_json
from longctx.modeling import load_tokenizer
from longctx.params import stage_params

if __name__ == "__main__":
    args = stage_args(__doc__, {"tokenizer": "model folder whose tokenizer to use", "out": "folder for train.jsonl",
                                "card": "data card summary (JSON metrics)", "plot": "length histogram (PNG)"})
    p = stage_params()
    card = prepare_sft_data(p.data, load_tokenizer(args.tokenizer), args.out)
    atomic_write_json(args.card, card["summary"])
    plot_length_histogram(card["lengths_by_source"], args.plot)
    print(f"prepare: {card['summary']}")
