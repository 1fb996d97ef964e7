"""Long-dialog recall: one fact mentioned early in a long Alice/Bob transcript.

The context is a transcript ("Alice: ..." / "Bob: ..." turns, one per line) whose turns are
real sentences of the filler corpus (``filler.py``); one turn, early by default, is Bob
saying "By the way, my cousin lives in <city>." The question is "Where does Bob's cousin
live?" and the answer prefix "Bob's cousin lives in" makes the next tokens exactly the city.

Why a separate task: the fine-tuning data quotes whole chitchat conversations and asks about
them; this probes the same skill (recall of a detail said long ago in a dialogue) in another
form: a transcript, a fact stated in passing, answered from far away.

Token-exact like the other tasks: the fact turn's first token sits at haystack offset
``round(depth * haystack_len)`` (haystack = transcript without the fact turn); the turn before
it and the transcript's last turn are cut mid-turn where the token budget runs out.
"""

from __future__ import annotations

from longctx.evaluation.filler import corpus_sentences
from longctx.evaluation.needle import _check_depth, budget, make_sample, sample_rng, tok
from longctx.evaluation.samples import EvalSample, answer_token_ids, prompt_frame

# One-token-ish, unambiguous city names (none is a Python term).
CITIES = [
    "Lisbon", "Nairobi", "Oslo", "Lima", "Hanoi", "Dublin", "Seville", "Krakow", "Montreal",
    "Osaka", "Tbilisi", "Valparaiso", "Edinburgh", "Marrakesh", "Reykjavik", "Adelaide",
    "Bergen", "Quito", "Porto", "Salzburg", "Zanzibar", "Helsinki", "Cusco", "Tallinn",
]
SPEAKERS = ("Alice", "Bob")


def _transcript(tokenizer, rng, n_tokens: int, first_speaker: int) -> list[int]:
    """``n_tokens`` of alternating turns made of consecutive corpus sentences (1-2 per turn)."""
    sents = corpus_sentences()
    pos = rng.randrange(len(sents))
    speaker = first_speaker
    out: list[int] = []
    while len(out) < n_tokens:
        texts = []
        for _ in range(256):  # tokenise turns in batches
            k = rng.choice((1, 2))
            body = " ".join(sents[(pos + j) % len(sents)] for j in range(k))
            pos += k
            texts.append(f"\n{SPEAKERS[speaker]}: {body}")
            speaker ^= 1
        for ids in tokenizer(texts, add_special_tokens=False).input_ids:
            out.extend(ids)
            if len(out) >= n_tokens:
                break
    return out[:n_tokens]


def generate_dialog_recall(tokenizer, length: int, depth: float | None, num_samples: int, seed: int,
                           use_chat_template: bool) -> list[EvalSample]:
    """Recall where Bob's cousin lives from a long transcript.

    ``depth=None`` puts the fact turn early: a seeded depth drawn uniformly from [0.05, 0.25].
    """
    samples = []
    for i in range(num_samples):
        rng = sample_rng("dialog_recall", seed, i)
        city = rng.choice(CITIES)
        d = rng.uniform(0.05, 0.25) if depth is None else depth
        _check_depth(d)
        frame = prompt_frame(tokenizer, use_chat_template, "Bob's cousin lives in")
        intro = tok(tokenizer, "Below is the transcript of a long conversation between Alice and Bob.\n")
        fact = tok(tokenizer, f"\nBob: By the way, my cousin lives in {city}.")
        question = tok(tokenizer, "\n\nQuestion: Where does Bob's cousin live? Answer with the city name only.")
        answer_ids = answer_token_ids(tokenizer, city)
        hay_len = budget(length, frame.prefix_ids, frame.suffix_ids, intro, fact, question, answer_ids)
        t = round(d * hay_len)
        before = _transcript(tokenizer, rng, t, rng.randrange(2))
        after = _transcript(tokenizer, rng, hay_len - t, 0)  # Alice replies to Bob's fact
        haystack = before + fact + after
        hs = len(frame.prefix_ids) + len(intro)
        meta = {"haystack_len": hay_len, "depth": d, "city": city, "needle_offset": hs + t}
        samples.append(make_sample("dialog_recall", length, depth, i, frame, intro, haystack,
                                   question, city, answer_ids, meta))
    return samples
