"""Stage prepare: long-dialog SFT data (train.jsonl), its data card (JSON) and a length histogram (PNG)."""

from longctx.cli import stage_args
from longctx.data import plot_length_histogram, prepare_sft_data
from longctx.io import atomic_write_json
from longctx.modeling import load_tokenizer
from longctx.params import fail, stage_check, stage_params
from longctx.sources import check_local_or_hub, fingerprint_sources

if __name__ == "__main__":
    args = stage_args(__doc__, {"tokenizer": "model folder whose tokenizer to use", "out": "folder for train.jsonl",
                                "card": "data card summary (JSON metrics)", "plot": "length histogram (PNG)"})
    p = stage_params()
    stage_check(fingerprint_sources, p.data)  # local files: UTF-8 and JSON syntax, with file and line
    for i, src in enumerate(p.data.sources):
        if src.path_or_id and not src.is_local():
            stage_check(check_local_or_hub, src.path_or_id, f"data.sources[{i}].path_or_id", repo_type="dataset")
    try:
        card = prepare_sft_data(p.data, load_tokenizer(args.tokenizer), args.out)
    except ValueError as e:  # the data readers' errors start with file:line or the source; one line, no traceback
        fail(f"data.sources: {e}")
    atomic_write_json(args.card, card["summary"])
    plot_length_histogram(card["lengths_by_source"], args.plot)
    print(f"prepare: {card['summary']}")
