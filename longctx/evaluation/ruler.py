"""RULER synthetic tasks, rebuilt token-exact on real filler.

RULER (Hsieh et al., "RULER: What's the Real Context Size of Your Long-Context Language
Models?", arXiv 2404.06654; code: github.com/NVIDIA/RULER, scripts/data/synthetic/) defines
tasks that go beyond single-needle retrieval. We follow its definitions and templates
(``constants.py`` there) with three deliberate changes:

* prompts are assembled in token space so length and needle offsets are exact (RULER
  binary-searches a haystack size in text space and only guarantees ``<= max_seq_length``);
* the haystack is real text (Python documentation, ``filler.py``) where RULER uses Paul
  Graham essays or the repeated "noise" sentences;
* scoring is the lead's teacher-forced exact match on ``answer_ids`` (RULER uses
  ``string_match_all``: the fraction of reference strings found in a free generation), so
  every multi-item answer has one fixed order, stated in the question.

Tasks (RULER names in brackets):

``generate_multikey`` [niah_multikey_1]: several needles "One of the special magic numbers
for <key> is: <value>." with distinct word keys; one key is asked, the others are distractors.

``generate_multivalue`` [niah_multivalue]: one key with several values in separate needles;
all values must be produced, in the order they appear in the text.

``generate_variable_tracking`` [vt]: a chain ``VAR A = 12345``, ``VAR B = VAR A``, ... of
``num_hops`` hops; asked which variables are assigned the value, answer = names in chain order.

``generate_common_words`` [cwe]: a numbered word list in which ``num_common`` words appear
``freq_common`` times and all others ``freq_uncommon`` times; asked for the most common words,
answered most frequent first, ties by first appearance.
"""

from __future__ import annotations

import functools
import random
import re
import string
from collections import Counter

from longctx.evaluation.filler import (
    anchored_layout,
    corpus_text,
    filler_ids,
    haystack_filler,
    insert_items,
    single_token_pad,
    spread_positions,
)
from longctx.evaluation.needle import _check_depth, budget, make_sample, sample_rng, tok
from longctx.evaluation.samples import EvalSample, answer_token_ids, prompt_frame

# RULER builds keys as "<adjective>-<noun>" from the wonderwords lists; a fixed subset here.
ADJECTIVES = [
    "amber", "brave", "calm", "dusty", "eager", "fancy", "gentle", "hollow", "icy", "jolly",
    "kind", "lucky", "misty", "noble", "odd", "proud", "quiet", "rapid", "silent", "tidy",
    "urban", "vivid", "wild", "young", "zealous", "bold", "crisp", "frozen", "golden", "humble",
]
NOUNS = [
    "anchor", "badger", "canyon", "dragon", "engine", "falcon", "garden", "harbor", "island",
    "jacket", "kettle", "lantern", "meadow", "needle", "orchard", "pepper", "quarry", "rabbit",
    "saddle", "tiger", "umbrella", "valley", "walnut", "yacht", "zebra", "button", "candle",
    "feather", "glacier", "mirror",
]


def _keys(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct adjective-noun keys (RULER's ``type_needle_k='words'``)."""
    pairs = rng.sample(range(len(ADJECTIVES) * len(NOUNS)), n)
    return [f"{ADJECTIVES[p // len(NOUNS)]}-{NOUNS[p % len(NOUNS)]}" for p in pairs]


def _numbers(rng: random.Random, n: int, digits: int = 7) -> list[str]:
    """``n`` distinct random numbers with ``digits`` digits (RULER's ``generate_random_number``)."""
    out: list[str] = []
    while len(out) < n:
        v = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
        if v not in out:
            out.append(v)
    return out


def _magic_needle(tokenizer, key: str, value: str) -> list[int]:
    # RULER niah.py: needle = "One of the special magic {type_needle_v} for {key} is: {value}."
    return tok(tokenizer, f" One of the special magic numbers for {key} is: {value}.")


def _niah_sample(task, tokenizer, length, depth, index, rng, use_chat_template, needles, anchor_i,
                 intro_text, question_text, answer_prefix, values, answer_i, meta):
    """Shared NIAH assembly: needle ``anchor_i`` at the depth, the others spread around it.

    ``answer_i`` is the index of the answer value, or None for "all values in order of
    appearance" (multivalue). The haystack is the filler plus the free (non-anchor) needles;
    the anchor starts at ``round(depth * haystack_len)`` inside it.
    """
    frame = prompt_frame(tokenizer, use_chat_template, answer_prefix)
    intro, question = tok(tokenizer, intro_text), tok(tokenizer, question_text)
    d = rng.random() if depth is None else depth
    _check_depth(d)
    free = [n for i, n in enumerate(needles) if i != anchor_i]
    # Multivalue: the answer order is only known after the layout. Size the haystack for the
    # insertion-order answer; if the final order tokenises to another length (it does not for
    # digit-splitting tokenizers) the filler tail is adjusted below.
    provisional = answer_token_ids(tokenizer, values[answer_i] if answer_i is not None else ", ".join(values))
    hay_len = budget(length, frame.prefix_ids, frame.suffix_ids, intro, question, provisional, needles[anchor_i])
    free_len = sum(len(n) for n in free)
    offset = round(d * hay_len)
    anchor_pos, keys = anchored_layout(rng, hay_len, offset, [len(n) for n in free])
    filler = haystack_filler(tokenizer, hay_len - free_len, [anchor_pos] + [k[0] for k in keys], rng)
    order = [anchor_i] + [i for i in range(len(needles)) if i != anchor_i]
    haystack, starts = insert_items(filler, [needles[i] for i in order], [(anchor_pos, 1)] + keys)
    offsets = [0] * len(needles)
    for pos, i in zip(starts, order):
        offsets[i] = pos
    if answer_i is not None:
        answer, answer_ids = values[answer_i], provisional
    else:
        answer = ", ".join(v for _, v in sorted(zip(offsets, values)))
        answer_ids = answer_token_ids(tokenizer, answer)
        delta = len(provisional) - len(answer_ids)
        if delta > 0:
            haystack = haystack + filler_ids(tokenizer, delta, rng.randrange(2**31), align="end")
        elif delta < 0:
            if len(haystack) + delta < max(o + len(n) for o, n in zip(offsets, needles)):
                raise ValueError(f"length {length} too small for {task}")
            haystack = haystack[:delta]
    hs = len(frame.prefix_ids) + len(intro)
    meta = {**meta, "haystack_len": hay_len, "depth": d,
            "needle_offset": hs + offsets[anchor_i], "needle_offsets": [hs + o for o in offsets]}
    return make_sample(task, length, depth, index, frame, intro, haystack, question, answer, answer_ids, meta)


def generate_multikey(tokenizer, length: int, depth: float | None, num_samples: int, seed: int,
                      use_chat_template: bool, num_keys: int = 4) -> list[EvalSample]:
    """RULER ``niah_multikey_1``: ``num_keys`` key->number needles, one key queried.

    The queried needle starts at ``round(depth * haystack_len)`` in the haystack, where the
    haystack is the filler plus the ``num_keys - 1`` distractor needles; distractors are spread
    uniformly (seeded) on both sides. Answer: the 7-digit number.
    """
    samples = []
    for i in range(num_samples):
        rng = sample_rng("multikey", seed, i)
        keys, values = _keys(rng, num_keys), _numbers(rng, num_keys)
        needles = [_magic_needle(tokenizer, k, v) for k, v in zip(keys, values)]
        q = rng.randrange(num_keys)
        samples.append(_niah_sample(
            "multikey", tokenizer, length, depth, i, rng, use_chat_template, needles, q,
            # RULER template with num_needle_q * num_needle_v == 1 ("A special magic number ...")
            "Some special magic numbers are hidden within the following text. Make sure to "
            "memorize it. I will quiz you about the numbers afterwards.\n",
            f"\nWhat is the special magic number for {keys[q]} mentioned in the provided text?",
            f"The special magic number for {keys[q]} mentioned in the provided text is",
            values, q, {"key": keys[q], "keys": keys, "values": values},
        ))
    return samples


def generate_multivalue(tokenizer, length: int, depth: float | None, num_samples: int, seed: int,
                        use_chat_template: bool, num_values: int = 4) -> list[EvalSample]:
    """RULER ``niah_multivalue``: one key, ``num_values`` needles each with another number.

    The first generated value's needle starts at ``round(depth * haystack_len)`` (haystack =
    filler + the other value needles, which are spread uniformly on both sides). All values
    must be produced; the answer lists them joined by ", " in the order they appear in the
    text (the question says so), which makes teacher-forced exact match well defined.
    """
    samples = []
    for i in range(num_samples):
        rng = sample_rng("multivalue", seed, i)
        key, values = _keys(rng, 1)[0], _numbers(rng, num_values)
        needles = [_magic_needle(tokenizer, key, v) for v in values]
        samples.append(_niah_sample(
            "multivalue", tokenizer, length, depth, i, rng, use_chat_template, needles, 0,
            "Some special magic numbers are hidden within the following text. Make sure to "
            "memorize it. I will quiz you about the numbers afterwards.\n",
            f"\nWhat are all the special magic numbers for {key} mentioned in the provided text? "
            "List them in the order they appear, separated by commas.",
            f"The special magic numbers for {key} mentioned in the provided text are",
            values, None, {"key": key, "values": values},
        ))
    return samples


def _var_names(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct 5-letter upper-case names (RULER ``generate_chains``)."""
    out: list[str] = []
    while len(out) < n:
        v = "".join(rng.choices(string.ascii_uppercase, k=5))
        if v not in out:
            out.append(v)
    return out


def generate_variable_tracking(tokenizer, length: int, depth: float | None, num_samples: int, seed: int,
                               use_chat_template: bool, num_hops: int = 4, num_chains: int = 1) -> list[EvalSample]:
    """RULER ``vt``: follow ``VAR A = 12345``, ``VAR B = VAR A``, ... through ``num_hops`` hops.

    Statements keep chain order in the text (RULER inserts them in order). With
    ``num_chains > 1`` the extra chains (other values) are distractors, as in RULER.

    ``depth=None``: all statements are spread uniformly (seeded) over the filler.
    ``depth=d``: the value assignment (hop 0) of the queried chain starts at filler offset
    ``round(d * haystack_len)`` and its later hops are spread after it; here ``haystack_len``
    is the filler length alone, because the later hops must follow hop 0 and so cannot be
    counted in the text before it. Distractor chains (``num_chains > 1``) are spread over
    the whole filler, so their statements before hop 0 shift its absolute offset;
    ``meta["needle_offset"]`` is always the true absolute offset.
    Answer: the ``num_hops + 1`` names joined by ", " in chain order.
    """
    samples = []
    for i in range(num_samples):
        rng = sample_rng("variable_tracking", seed, i)
        names = _var_names(rng, (num_hops + 1) * num_chains)
        values = _numbers(rng, num_chains, digits=5)  # RULER: np.random.randint(10000, 99999)
        chains = []
        for c in range(num_chains):
            vs = names[c * (num_hops + 1) : (c + 1) * (num_hops + 1)]
            stmts = [f" VAR {vs[0]} = {values[c]}."] + [f" VAR {vs[j + 1]} = VAR {vs[j]}." for j in range(num_hops)]
            chains.append((vs, [tok(tokenizer, s) for s in stmts]))
        target_vars = chains[0][0]
        answer = ", ".join(target_vars)
        frame = prompt_frame(
            tokenizer, use_chat_template,
            # RULER answer_prefix (its "they are: " ends in a space; ours comes from the answer)
            f"Answer: According to the chain(s) of variable assignment in the text above, "
            f"{num_hops + 1} variables are assigned the value {values[0]}, they are:",
        )
        intro = tok(tokenizer, "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n")
        question = tok(tokenizer, f"\nQuestion: Find all variables that are assigned the value {values[0]} in the text above. "
                                  "List them in the order of the chain, separated by commas.")
        answer_ids = answer_token_ids(tokenizer, answer)
        all_stmts = [s for _, stmts in chains for s in stmts]
        filler_len = budget(length, frame.prefix_ids, frame.suffix_ids, intro, question, answer_ids, *all_stmts)
        keys: list[tuple[int, int]] = []
        d = depth
        if d is None:
            keys += [(p, 1) for p in spread_positions(rng, num_hops + 1, 0, filler_len)]
        else:
            _check_depth(d)
            start = round(d * filler_len)
            # hop 0 at `start` with rank 1; later hops at or after it (rank 1 too, list order
            # keeps the chain order at equal positions); distractors (rank 0/2) never split it.
            keys += [(start, 1)] + [(p, 1) for p in spread_positions(rng, num_hops, start, filler_len)]
        for _ in chains[1:]:
            keys += [(p, 0) for p in spread_positions(rng, num_hops + 1, 0, filler_len)]
        filler = haystack_filler(tokenizer, filler_len, [k[0] for k in keys], rng)
        haystack, starts = insert_items(filler, all_stmts, keys)
        hs = len(frame.prefix_ids) + len(intro)
        meta = {"haystack_len": filler_len, "value": values[0], "variables": target_vars,
                "needle_offset": hs + starts[0], "needle_offsets": [hs + s for s in starts[: num_hops + 1]]}
        samples.append(make_sample("variable_tracking", length, depth, i, frame, intro, haystack,
                                   question, answer, answer_ids, meta))
    return samples


@functools.lru_cache(maxsize=1)
def _corpus_words() -> tuple[str, ...]:
    return tuple(sorted(set(re.findall(r"\b[a-z]{4,12}\b", corpus_text()))))


def _word_pool(rng: random.Random, size: int) -> list[str]:
    """``size`` distinct words for cwe, in seeded random order.

    RULER draws single words from the wonderwords noun/adjective/verb lists and falls back to
    a larger English word list for long contexts. Here the lower-case words of the filler
    corpus (~2.5k) come first, then hyphenated pairs of them (RULER's "adjective-noun" key
    style), as many as the length needs.
    """
    words = list(_corpus_words())
    rng.shuffle(words)
    pool, seen = words[:size], set(words)
    while len(pool) < size:
        w = f"{rng.choice(words)}-{rng.choice(words)}"
        if w not in seen:
            seen.add(w)
            pool.append(w)
    return pool


def generate_common_words(
    tokenizer,
    length: int,
    depth: float | None,
    num_samples: int,
    seed: int,
    use_chat_template: bool,
    num_common: int = 10,
    freq_common: int | None = None,
    freq_uncommon: int | None = None,
) -> list[EvalSample]:
    """RULER ``cwe`` (common words extraction): the ``num_common`` most frequent words of a
    long numbered list.

    Frequencies follow RULER: 30 vs 3 occurrences, or 6 vs 1 below 4096 tokens. The list is
    "1. word 2. word ..." (RULER's format), items shuffled (seeded); the number of uncommon
    words is chosen so the list fills the length exactly, and the last residue of fewer tokens
    than one item is padded with a single-token whitespace. There is no needle: ``depth``
    must be None. Answer: the common words joined by ", ", most frequent first, ties in order
    of first appearance.
    """
    if depth is not None:
        raise ValueError("common_words has no needle; depth must be None")
    fc = freq_common if freq_common is not None else (30 if length >= 4096 else 6)
    fu = freq_uncommon if freq_uncommon is not None else (3 if length >= 4096 else 1)
    if fu >= fc:
        raise ValueError("freq_uncommon must be smaller than freq_common")
    pad = single_token_pad(tokenizer)
    samples = []
    for i in range(num_samples):
        rng = sample_rng("common_words", seed, i)
        # every item costs at least 2 tokens (number + word), so this many words always suffice
        pool = _word_pool(rng, num_common + length // (2 * fu) + 1)
        frame = prompt_frame(tokenizer, use_chat_template,
                             f"Answer: The top {num_common} words that appear most often in the list are:")
        intro = tok(tokenizer, "Below is a numbered list of words. In these words, some appear more often "
                               "than others. Memorize the ones that appear most often.\n")
        question = tok(tokenizer, f"\nQuestion: What are the {num_common} most common words in the above list? "
                                  "List them from most to least frequent (ties in order of first appearance), "
                                  "separated by commas.")
        common = pool[:num_common]
        # The answer lists the common words in order of first appearance, known only after the
        # shuffle; its token length can differ by order (merges at ", "), so keep a slack of
        # one token per word, filled with padding at the end.
        answer_guess = answer_token_ids(tokenizer, ", ".join(common))
        slack = num_common
        room = budget(length, frame.prefix_ids, frame.suffix_ids, intro, question, answer_guess) - slack
        word_ids: dict[str, list[int]] = {}
        num_cache: dict[int, list[int]] = {}

        def wlen(w):
            if w not in word_ids:
                word_ids[w] = tok(tokenizer, f" {w}")
            return len(word_ids[w])

        def num_ids(n):
            # Items are "<n>." + " <word>", tokenised separately and concatenated: the token
            # cost is additive, so the list length is known exactly before shuffling.
            if n not in num_cache:
                num_cache[n] = tok(tokenizer, f" {n}." if n > 1 else f"{n}.")
            return num_cache[n]

        used = 0
        occ: list[str] = []

        def add(w, times):
            nonlocal used
            cost = sum(wlen(w) + len(num_ids(len(occ) + j + 1)) for j in range(times))
            if used + cost > room:
                return False
            occ.extend([w] * times)
            used += cost
            return True

        for w in common:
            if not add(w, fc):
                raise ValueError(f"length {length} too small for {num_common} common words x {fc}")
        k = num_common
        # Uncommon words (fu occurrences each) while they fit, then single occurrences for the
        # last few tokens (still uncommon, since 1 <= fu < fc).
        while k < len(pool) and add(pool[k], fu):
            k += 1
        while k < len(pool) and add(pool[k], 1):
            k += 1
        rng.shuffle(occ)
        ids: list[int] = []
        for n, w in enumerate(occ, start=1):
            ids += num_ids(n) + word_ids[w]
        counts = Counter(occ)
        first: dict[str, int] = {}
        for n, w in enumerate(occ):
            first.setdefault(w, n)
        ranked = sorted(counts, key=lambda w: (-counts[w], first[w]))[:num_common]
        answer = ", ".join(ranked)
        answer_ids = answer_token_ids(tokenizer, answer)
        residue = room + slack + len(answer_guess) - len(answer_ids) - used
        if residue < 0:
            raise ValueError("the ordered answer is longer than the reserved slack")
        # Spend the slack on more single uncommon words at the end of the list; appended after
        # the shuffle they change neither the counts of the common words nor their first
        # appearances, hence not the answer. What is left (a few tokens) is padding.
        room, used = used + residue, used
        while k < len(pool) and add(pool[k], 1):
            ids += num_ids(len(occ)) + word_ids[pool[k]]
            k += 1
        residue = room - used
        if residue > 2 * slack + 16:  # a guard: the pool above is sized so this cannot happen
            raise AssertionError(f"common_words: {residue} tokens of padding left")
        haystack = ids + [pad] * residue
        meta = {"haystack_len": len(haystack), "common": ranked, "freq_common": fc,
                "freq_uncommon": fu, "num_items": len(occ), "needle_offset": None}
        samples.append(make_sample("common_words", length, depth, i, frame, intro, haystack,
                                   question, answer, answer_ids, meta))
    return samples
