"""Real filler text for synthetic long-context tasks, in token space.

Source: ``pydoc_data.topics.topics``, the help-topic texts of the Python documentation
that ship with every CPython install (about 465k characters; ~113k tokens with a Llama-style
tokenizer). Licence: Python Software Foundation License (the documentation is (c) the PSF
and distributed with CPython under the PSF licence), so it can be used and redistributed
freely, and nothing has to be downloaded.

Why not one repeated sentence (as in the original passkey test)? A repeated sentence is a
trivially compressible haystack: a model can spot the one odd sentence without really reading
the context. Real, varied prose makes the needle compete with genuine content, as RULER does
with Paul Graham's essays (arXiv 2404.06654, section 3).

The corpus is tokenised once per tokenizer (whitespace collapsed to single spaces, topics in
sorted order) and cached. ``filler_ids`` then returns ``n`` consecutive real tokens from a
seed-chosen start snapped to the nearest following sentence start, wrapping around the
corpus end. Only one side can be snapped (the length must be exact), so the haystacks are
built gap by gap (``haystack_filler``): each gap between inserted items is a piece that
starts a sentence plus a piece that ends one, and every needle borders whole sentences.

Also here: the small token-space helpers every task uses to insert items (needles, chain
statements, ...) into filler at exact token offsets.
"""

from __future__ import annotations

import functools
import random
import re

import numpy as np

_PROBE = "The quick brown fox; def f(x): return x ** 2  # 12345 Ünïcödé"
# A sentence ends with . ! or ? and the next one starts (after whitespace) with a capital.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@functools.lru_cache(maxsize=1)
def corpus_text() -> str:
    """The whole filler corpus as one string (pydoc topics, sorted by name, whitespace collapsed).

    Collapsing whitespace (as RULER does with its essays) turns indented code samples and
    tables into running text, so the haystack has no long runs of space tokens.
    """
    from pydoc_data.topics import topics

    parts = [re.sub(r"\s+", " ", topics[name]).strip() for name in sorted(topics)]
    return " ".join(p for p in parts if p)


@functools.lru_cache(maxsize=1)
def corpus_sentences() -> tuple[str, ...]:
    """The corpus split into sentences (text, tokenizer independent), for turn-based tasks."""
    return tuple(s for s in _SENTENCE_BREAK.split(corpus_text()) if s)


def _tokenizer_key(tokenizer) -> tuple:
    """Cache key: name, vocabulary size and the ids of a probe string.

    The probe makes two in-memory tokenizers with an empty ``name_or_path`` (as in tests)
    and equal vocab size still get different cache entries when they tokenise differently.
    """
    probe = tuple(tokenizer(_PROBE, add_special_tokens=False).input_ids)
    return (getattr(tokenizer, "name_or_path", ""), len(tokenizer), probe)


class _Keyed:
    """Hashable by key only, so ``functools.lru_cache`` can cache per tokenizer."""

    def __init__(self, key, tokenizer):
        self.key, self.tokenizer = key, tokenizer

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Keyed) and other.key == self.key


@functools.lru_cache(maxsize=4)
def _tokenised_corpus(keyed: _Keyed) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, token indices where a sentence starts) for the corpus."""
    tok = keyed.tokenizer
    text = corpus_text()
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = np.array([s for s, _ in enc["offset_mapping"]], dtype=np.int64)
    except (NotImplementedError, ValueError, TypeError):  # slow tokenizers have no offsets
        enc = tok(text, add_special_tokens=False)
        starts = None
    ids = np.array(enc["input_ids"], dtype=np.int64)
    if starts is None:
        sent = np.array([0], dtype=np.int64)
    else:
        # First token starting at or after the whitespace that follows a sentence end. With or
        # without trimmed offsets that is the token carrying the next sentence's first word.
        breaks = [m.start() for m in _SENTENCE_BREAK.finditer(text)]
        sent = np.unique(np.concatenate([[0], np.searchsorted(starts, breaks, side="left")]))
        sent = sent[sent < len(ids)]
    return ids, sent


def corpus_ids(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the filler corpus and the token indices where sentences start (cached)."""
    return _tokenised_corpus(_Keyed(_tokenizer_key(tokenizer), tokenizer))


def _window(ids: np.ndarray, start: int, n: int) -> list[int]:
    """``n`` tokens from ``start``, wrapping around the corpus end."""
    return ids.take(np.arange(start, start + n) % len(ids)).tolist()


def filler_ids(tokenizer, n_tokens: int, seed: int, align: str = "start") -> list[int]:
    """``n_tokens`` consecutive real filler tokens at a seed-chosen place, wrapping around.

    ``align="start"``: the text begins at a sentence start (the end is cut wherever
    ``n_tokens`` runs out). ``align="end"``: it ends exactly at a sentence end instead.
    """
    if n_tokens <= 0:
        return []
    ids, sent = corpus_ids(tokenizer)
    rng = random.Random(f"filler|{seed}")
    # a sentence start, chosen uniformly by token position (longer sentences more likely)
    k = int(np.searchsorted(sent, rng.randrange(len(ids)))) % len(sent)
    boundary = int(sent[k])
    if align == "start":
        return _window(ids, boundary, n_tokens)
    if align == "end":  # the tokens just before a sentence start end with a sentence end
        return _window(ids, (boundary - n_tokens) % len(ids), n_tokens)
    raise ValueError(f"align must be 'start' or 'end', got {align!r}")


def gap_filler(tokenizer, n_tokens: int, seed: int) -> list[int]:
    """Filler for the gap between two inserted items: a piece that starts at a sentence start
    followed by one that ends at a sentence end, so both neighbouring items border whole
    sentences; the one seam sits in the middle of the gap, away from the items."""
    head = n_tokens // 2
    return filler_ids(tokenizer, head, seed, "start") + filler_ids(tokenizer, n_tokens - head, seed + 1, "end")


def haystack_filler(tokenizer, filler_len: int, cut_points: list[int], rng: random.Random) -> list[int]:
    """``filler_len`` filler tokens built gap by gap, with gaps split at ``cut_points`` (the
    filler positions where items will be inserted), each gap filled by ``gap_filler``."""
    cuts = sorted({0, filler_len, *(c for c in cut_points if 0 <= c <= filler_len)})
    out: list[int] = []
    for lo, hi in zip(cuts, cuts[1:]):
        out += gap_filler(tokenizer, hi - lo, rng.randrange(2**31))
    return out


def single_token_pad(tokenizer) -> int:
    """A whitespace id that tokenises to exactly one token, for padding a residue of a few tokens."""
    for text in ("\n", " ", ".", " ."):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) == 1:
            return ids[0]
    raise ValueError("tokenizer has no single-token whitespace or period")


def spread_positions(rng: random.Random, n: int, lo: int, hi: int) -> list[int]:
    """``n`` sorted integer positions drawn uniformly from ``[lo, hi]`` (seeded)."""
    return sorted(rng.randint(lo, hi) for _ in range(n))


def anchored_layout(
    rng: random.Random, haystack_len: int, anchor_offset: int, free_lens: list[int]
) -> tuple[int, list[tuple[int, int]]]:
    """Place one anchored item at an exact haystack offset and free items uniformly around it.

    ``haystack_len`` counts filler plus free items (everything but the anchor), and the anchor
    must start at ``anchor_offset`` of it. Each free item is drawn to the left or right of the
    anchor in proportion to the space there; items are moved across if a side overflows.

    Returns the anchor's filler position and, per free item, ``(filler_position, rank)`` where
    rank 0 sorts before the anchor at equal filler position and rank 2 after it.
    """
    total_free = sum(free_lens)
    filler_len = haystack_len - total_free
    if filler_len < 0 or not 0 <= anchor_offset <= haystack_len:
        raise ValueError("haystack too short for the items to insert")
    draws = [rng.random() * haystack_len for _ in free_lens]
    before = {i for i, u in enumerate(draws) if u < anchor_offset}

    def load(side):
        return sum(free_lens[i] for i in side)

    after = set(range(len(free_lens))) - before
    while load(before) > anchor_offset and before:  # left side overflows: move the rightmost out
        i = max(before, key=lambda j: draws[j])
        before.remove(i)
        after.add(i)
    while load(after) > haystack_len - anchor_offset and after:
        i = min(after, key=lambda j: draws[j])
        after.remove(i)
        before.add(i)
    if load(before) > anchor_offset:
        raise ValueError("cannot fit the free items around the anchor; increase length")
    anchor_pos = anchor_offset - load(before)  # filler tokens before the anchor
    out: list[tuple[int, int]] = [(0, 0)] * len(free_lens)
    b, a = sorted(before), sorted(after)
    for i, p in zip(b, spread_positions(rng, len(b), 0, anchor_pos)):
        out[i] = (p, 0)
    for i, p in zip(a, spread_positions(rng, len(a), anchor_pos, filler_len)):
        out[i] = (p, 2)
    return anchor_pos, out


def insert_items(
    filler: list[int], items: list[list[int]], keys: list[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    """Insert token lists into filler at filler positions; return (ids, start offset per item).

    ``keys[i] = (filler_position, rank)``; items at the same position are ordered by rank, then
    by their index. Offsets are relative to the start of the returned haystack.
    """
    order = sorted(range(len(items)), key=lambda i: (keys[i][0], keys[i][1], i))
    out: list[int] = []
    starts = [0] * len(items)
    prev = 0
    for i in order:
        pos = keys[i][0]
        out.extend(filler[prev:pos])
        prev = pos
        starts[i] = len(out)
        out.extend(items[i])
    out.extend(filler[prev:])
    return out, starts
