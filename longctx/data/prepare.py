"""``prepare_sft_data``: sources -> tokenised, masked, length-filtered, ordered/packed train.jsonl.

Determinism: every random choice uses a ``random.Random`` seeded with a string derived from
``data.seed`` (string seeds hash with SHA-512, independent of PYTHONHASHSEED), records are
read in file order, and rows are serialised with fixed key order, so the same config and
tokenizer give a byte-identical ``train.jsonl``.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from longctx.data.card import length_stats, loss_token_share
from longctx.data.chat import IGNORE_INDEX, encode_conversation, fit_to_length, normalize_messages
from longctx.data.config import DataConfig, SourceConfig
from longctx.data.documents import document_chunks, iter_documents, tokenize_document
from longctx.data.embedded import build_conversation, load_chitchat
from longctx.data.formats import load_conversations
from longctx.data.packing import pack_greedy, position_ids
from longctx.io import atomic_write_lines

log = logging.getLogger(__name__)

TRAIN_FILE = "train.jsonl"
EMBEDDED_RETRIES = 8


@dataclass(frozen=True)
class Sample:
    source: str
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def allocate(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` by ``weights`` with the largest-remainder method (ties: earlier source)."""
    s = sum(weights)
    exact = [total * w / s for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _new_stats(requested: int) -> dict:
    return {
        "requested": requested,
        "count": 0,
        "truncated": 0,
        "dropped_too_long": 0,
        "dropped_too_short": 0,
        "dropped_no_assistant": 0,
    }


def _file_samples(src: SourceConfig, quota: int, cfg: DataConfig, tokenizer, rng, stats) -> list[Sample]:
    """Shuffle the (fully validated) records, then take them in order until ``quota`` pass."""
    conversations = load_conversations(src)
    stats["available"] = len(conversations)
    order = list(range(len(conversations)))
    rng.shuffle(order)
    out: list[Sample] = []
    for i in order:
        if len(out) == quota:
            break
        msgs = normalize_messages(conversations[i])
        if msgs is None:
            stats["dropped_no_assistant"] += 1
            continue
        fitted, status = fit_to_length(
            encode_conversation(tokenizer, msgs), cfg.max_tokens, cfg.min_tokens, cfg.overlong
        )
        if fitted is None:
            stats["dropped_no_assistant" if status == "no_labels" else f"dropped_{status}"] += 1
            continue
        stats["truncated"] += status == "truncated"
        out.append(_with_loss_on(Sample(src.label, *fitted), src))
    if len(out) < quota:
        log.warning("data source %s: %d of %d requested samples available", src.label, len(out), quota)
    return out


def _embedded_samples(src: SourceConfig, quota: int, cfg: DataConfig, tokenizer, rng, stats) -> list[Sample]:
    """Build ``quota`` recall conversations; an over-long one is rebuilt with a smaller target
    (never truncated: that would cut off the questions)."""
    corpus = load_chitchat(src.path_or_id)
    stats["available"] = len(corpus.eligible)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    lo = max(cfg.min_tokens, int(cfg.embedded_min_fraction * cfg.max_tokens))
    hi = max(lo, int(cfg.embedded_max_fraction * cfg.max_tokens))
    out: list[Sample] = []
    while len(out) < quota:
        target = rng.randint(lo, hi)
        for _ in range(EMBEDDED_RETRIES):
            conv = build_conversation(rng, corpus, count_tokens, target, cfg.embedded_questions)
            fitted, status = fit_to_length(
                encode_conversation(tokenizer, conv.messages), cfg.max_tokens, cfg.min_tokens, "drop"
            )
            if fitted is not None:
                out.append(_with_loss_on(Sample(src.label, *fitted), src))
                break
            target = int(target * (0.85 if status == "too_long" else 1.25))
        else:
            stats["dropped_too_long" if status == "too_long" else "dropped_too_short"] += 1
            if stats["dropped_too_long"] + stats["dropped_too_short"] > quota:
                raise ValueError(
                    f"data source {src.label}: cannot build embedded conversations between "
                    f"data.min_tokens={cfg.min_tokens} and data.max_tokens={cfg.max_tokens} tokens"
                )
    return out


def _with_loss_on(sample: Sample, src: SourceConfig) -> Sample:
    """``loss_on: all``: every token is a target (user turns and template tokens too)."""
    if src.loss_tokens == "all":
        return Sample(sample.source, sample.input_ids, list(sample.input_ids))
    return sample


def _document_samples(src: SourceConfig, quota: int, cfg: DataConfig, tokenizer, rng, stats) -> list[Sample]:
    """Consecutive ``max_tokens`` chunks of documents in seeded order, loss on every token."""
    out: list[Sample] = []
    stats["available"] = 0  # documents read
    for text in iter_documents(src, cfg.seed):
        if len(out) == quota:
            break
        stats["available"] += 1
        chunks = document_chunks(tokenize_document(tokenizer, text), cfg.max_tokens, cfg.min_tokens)
        if not chunks:
            stats["dropped_too_short"] += 1
        for ids in chunks[: quota - len(out)]:
            out.append(Sample(src.label, ids, list(ids)))
    if len(out) < quota:
        log.warning("data source %s: %d of %d requested samples available", src.label, len(out), quota)
    return out


BUILDERS = {
    "embedded_chitchat": _embedded_samples,
    "sharegpt": _file_samples,
    "longalpaca": _file_samples,
    "documents": _document_samples,
    "embedded_documents": _document_samples,
}


def arrange(samples: list[Sample], cfg: DataConfig) -> list[list[int]]:
    """Group sample indices into training sequences and order them (curriculum / shuffle)."""
    order = list(range(len(samples)))
    random.Random(f"{cfg.seed}:mix").shuffle(order)  # interleave sources
    short_to_long = cfg.curriculum == "short_to_long"
    if short_to_long:
        order.sort(key=lambda i: len(samples[i]))  # stable: ties keep the shuffled order
    if cfg.pack:
        bins = pack_greedy([len(samples[i]) for i in order], cfg.max_tokens, cfg.min_tokens)
        seqs = [[order[j] for j in b] for b in bins]
    else:
        seqs = [[i] for i in order]
    if short_to_long:
        # A packed sequence is as "long" as its longest sample (samples do not see each other).
        seqs.sort(key=lambda s: (max(len(samples[i]) for i in s), sum(len(samples[i]) for i in s)))
    else:
        random.Random(f"{cfg.seed}:order").shuffle(seqs)
    return seqs


def _row(seq: list[int], samples: list[Sample]) -> dict:
    ids: list[int] = []
    labels: list[int] = []
    for i in seq:
        s = samples[i]
        ids.extend(s.input_ids)
        # The first token of a sample is never a target (see packing.py).
        labels.append(IGNORE_INDEX)
        labels.extend(s.labels[1:])
    seq_lens = [len(samples[i]) for i in seq]
    srcs = [samples[i].source for i in seq]
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": position_ids(seq_lens),
        "seq_lens": seq_lens,
        "source": "+".join(sorted(set(srcs))),
        "sample_sources": srcs,
    }


def prepare_sft_data(cfg: dict | DataConfig, tokenizer, out_dir: Path) -> dict:
    """Build ``out_dir/train.jsonl`` from the ``data:`` params block and return the data card.

    Returns ``{"summary": ..., "lengths_by_source": ...}``: ``summary`` is small and
    JSON-serialisable (for ``metrics/data.json``): seed, max_tokens, pack, curriculum,
    num_samples, num_sequences, total_tokens, label_tokens, loss_token_share (label_tokens /
    total_tokens: the share of tokens that carry loss), packing_efficiency,
    sample_length / sequence_length stats (min/p10/p50/p90/max/mean) and per-source
    ``sources[name]`` = {type, requested, available, count, truncated, dropped_too_long,
    dropped_too_short, dropped_no_assistant, tokens, label_tokens, loss_token_share, loss_on, length}
    (for document sources ``available`` counts the documents read).
    ``lengths_by_source`` maps source name -> sample token lengths (for
    ``plot_length_histogram``; not meant for the metrics file).

    Each line: ``input_ids``, ``labels`` (-100 outside assistant replies, unless ``loss_on: all``), ``position_ids``
    (restarting at 0 per packed sample), ``seq_lens`` (lengths of the samples in the
    sequence; one entry when not packing), ``source`` (source name, "+"-joined if a packed
    sequence mixes sources) and ``sample_sources`` (source of each sample, parallel to
    ``seq_lens``). Raises ValueError on bad config, malformed records, or if no sample survives.
    """
    config = cfg if isinstance(cfg, DataConfig) else DataConfig.from_dict(cfg)
    out_dir = Path(out_dir)
    quotas = allocate(config.num_samples, [s.weight for s in config.sources])

    samples: list[Sample] = []
    source_stats: dict[str, dict] = {}
    for src, quota in zip(config.sources, quotas):
        stats = source_stats[src.label] = {"type": src.type, **_new_stats(quota)}
        got: list[Sample] = []
        if quota > 0:
            rng = random.Random(f"{config.seed}:source:{src.label}")
            got = BUILDERS[src.type](src, quota, config, tokenizer, rng, stats)
        lengths = [len(s) for s in got]
        label_tokens = sum(sum(x != IGNORE_INDEX for x in s.labels[1:]) for s in got)
        stats.update(
            count=len(got),
            tokens=sum(lengths),
            label_tokens=label_tokens,
            loss_token_share=loss_token_share(label_tokens, sum(lengths)),
            loss_on=src.loss_tokens,
            length=length_stats(lengths),
        )
        samples.extend(got)
    if not samples:
        raise ValueError(f"no training samples left after filtering; per-source counts: {source_stats}")

    seqs = arrange(samples, config)
    atomic_write_lines(
        out_dir / TRAIN_FILE,
        (json.dumps(_row(seq, samples), separators=(",", ":"), ensure_ascii=False) for seq in seqs),
    )

    seq_lengths = [sum(len(samples[i]) for i in seq) for seq in seqs]
    total = sum(seq_lengths)
    lengths_by_source: dict[str, list[int]] = {}
    for s in samples:
        lengths_by_source.setdefault(s.source, []).append(len(s))
    summary = {
        "seed": config.seed,
        "max_tokens": config.max_tokens,
        "pack": config.pack,
        "curriculum": config.curriculum,
        "num_samples": len(samples),
        "num_sequences": len(seqs),
        "total_tokens": total,
        "label_tokens": sum(s["label_tokens"] for s in source_stats.values()),
        "loss_token_share": loss_token_share(sum(s["label_tokens"] for s in source_stats.values()), total),
        "packing_efficiency": round(total / (len(seqs) * config.max_tokens), 4),
        "sample_length": length_stats([len(s) for s in samples]),
        "sequence_length": length_stats(seq_lengths),
        "sources": source_stats,
    }
    return {"summary": summary, "lengths_by_source": lengths_by_source}
