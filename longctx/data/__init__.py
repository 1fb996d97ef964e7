"""Long-dialog SFT data: sources -> chat-templated, assistant-masked, packed ``train.jsonl``.

Modules:
    config    ``DataConfig`` / ``SourceConfig``: the ``data:`` params block, validated.
    formats   ShareGPT / LongAlpaca readers (local .json/.jsonl or Hugging Face hub).
    embedded  offline long recall conversations built from the ``chitchat-dataset`` package.
    chat      chat template + assistant-only labels, length policy.
    packing   greedy packing, position ids, block-diagonal mask.
    card      data-card statistics and the length histogram.
    prepare   ``prepare_sft_data``, the one entry point the stage calls.
"""

from longctx.data.card import length_stats, plot_length_histogram
from longctx.data.chat import IGNORE_INDEX, encode_conversation, normalize_messages
from longctx.data.config import DataConfig, SourceConfig
from longctx.data.packing import pack_greedy, packed_attention_mask, position_ids
from longctx.data.prepare import TRAIN_FILE, prepare_sft_data

__all__ = [
    "IGNORE_INDEX",
    "TRAIN_FILE",
    "DataConfig",
    "SourceConfig",
    "encode_conversation",
    "length_stats",
    "normalize_messages",
    "pack_greedy",
    "packed_attention_mask",
    "plot_length_histogram",
    "position_ids",
    "prepare_sft_data",
]
