"""Language-modelling samples from long documents: every token carries loss.

Two source types (``data.sources[i].type``):

* ``documents``: plain text. ``path_or_id`` is a ``.txt`` file (one document), a folder of
  ``.txt`` files (one document each, sorted by name), a ``.jsonl``/``.json`` file of records
  with a ``text`` field, or a Hugging Face dataset id (``datasets.load_dataset(path_or_id,
  split=..., revision=...)``, records with a ``text`` field), e.g. ``emozilla/pg19`` (PG19,
  the long-book corpus YaRN and PoSE train on) or ``togethercomputer/RedPajama-Data-1T-Sample``.
* ``embedded_documents``: the offline default. Long running transcripts made of the real
  human-human conversations of the ``chitchat-dataset`` PyPI package (MIT), joined in a
  seed-shuffled order (``A: ...`` / ``B: ...`` lines, a blank line between conversations).
  It shares no text with the evaluation corpora (``pydoc_data.topics``: haystack filler,
  perplexity text); tests/test_data_documents.py checks that.

A document is tokenised once (no special tokens; the tokenizer's EOS is appended as a
document separator) and cut into consecutive chunks of ``data.max_tokens``; the last partial
chunk is kept when it has at least ``data.min_tokens`` tokens. Documents are visited in a
seeded random order and their chunks taken in order until the source's quota is met, so a
long book contributes several consecutive windows (the setting of PI, PoSE, CREAM-Base and
YaRN, which train on chunked Pile / PG19 / RedPajama documents). Labels equal the input ids
(loss on all tokens, ``loss_on: all``); ``data.pack: true`` packs short chunks together.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from longctx.data.config import SourceConfig

TEXT_FIELD = "text"
# Conversations per embedded document: chitchat conversations average ~1,760 characters (~450
# tokens), so a document is ~115k tokens: several whole windows even at a 32k training length
# (the pi / yarn recipes); documents are cut into max_tokens chunks.
EMBEDDED_CONVERSATIONS_PER_DOC = 256


def iter_documents(source: SourceConfig, seed: int) -> Iterator[str]:
    """Document texts of a source, in a seeded random order (files: whole list shuffled once)."""
    rng = random.Random(f"{seed}:documents:{source.label}")
    if source.type == "embedded_documents":
        yield from _embedded_documents(source.path_or_id, rng)
        return
    texts = _read_texts(source)
    order = list(range(len(texts)))
    rng.shuffle(order)
    for i in order:
        yield texts[i]


def _read_texts(source: SourceConfig) -> list[str]:
    path = Path(source.path_or_id)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"{source.label}: folder {path} holds no .txt files")
        return [f.read_text(encoding="utf-8") for f in files]
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if path.exists() and path.suffix in (".jsonl", ".json"):
        records = _read_json_records(path)
    elif path.exists():
        raise ValueError(f"{source.label}: {path}: expected a .txt, .json or .jsonl file, or a folder of .txt files")
    else:
        records = _hub_records(source)
    out = []
    for where, rec in records:
        if not isinstance(rec, dict) or not isinstance(rec.get(TEXT_FIELD), str):
            raise ValueError(f"{where}: expected an object with a string '{TEXT_FIELD}' field")
        out.append(rec[TEXT_FIELD])
    return out


def _read_json_records(path: Path) -> list[tuple[str, object]]:
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json source must hold a list of records")
        return [(f"{path}[{i}]", r) for i, r in enumerate(data)]
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    out.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON: {e}") from None
    return out


def _hub_records(source: SourceConfig) -> list[tuple[str, object]]:
    """A hub dataset (needs the network and ``datasets``); only the text column is read."""
    import datasets

    ds = datasets.load_dataset(source.path_or_id, split=source.split, revision=source.revision)
    if TEXT_FIELD not in ds.column_names:
        raise ValueError(f"{source.path_or_id}: no '{TEXT_FIELD}' column (columns: {ds.column_names})")
    return [(f"{source.path_or_id}[{i}]", {TEXT_FIELD: t}) for i, t in enumerate(ds[TEXT_FIELD])]


def _embedded_documents(path: str | None, rng: random.Random) -> Iterator[str]:
    """Transcripts of ``EMBEDDED_CONVERSATIONS_PER_DOC`` chitchat conversations each, seed-shuffled."""
    from longctx.data.embedded import format_passage, load_chitchat

    corpus = load_chitchat(path)
    order = [i for i, c in enumerate(corpus.conversations) if c]
    rng.shuffle(order)
    for start in range(0, len(order), EMBEDDED_CONVERSATIONS_PER_DOC):
        group = order[start:start + EMBEDDED_CONVERSATIONS_PER_DOC]
        yield "\n\n".join(format_passage(corpus.conversations[i]) for i in group)


def document_chunks(ids: list[int], max_tokens: int, min_tokens: int) -> list[list[int]]:
    """Consecutive ``max_tokens`` windows of one tokenised document; a short tail needs ``min_tokens``."""
    chunks = [ids[i:i + max_tokens] for i in range(0, len(ids), max_tokens)]
    return [c for c in chunks if len(c) >= max(min_tokens, 2)]


def tokenize_document(tokenizer, text: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids
