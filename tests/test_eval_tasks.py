"""Synthetic long-context tasks: filler, needle, RULER tasks, dialog recall.

A small byte-level BPE (vocab 2000) is trained here on the filler corpus itself and wrapped
as a ``PreTrainedTokenizerFast`` with a ChatML template, so nothing is downloaded.
"""

import re

import pytest

from longctx.evaluation import dialog_recall, filler, needle, ruler
from longctx.evaluation.samples import prompt_frame

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(vocab_size: int = 2000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([filler.corpus_text()[i : i + 10000] for i in range(0, 480000, 10000)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", chat_template=CHATML
    )


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def find_all(haystack, needle_ids):
    n = len(needle_ids)
    return [i for i in range(len(haystack) - n + 1) if haystack[i : i + n] == needle_ids]


def exact_match(sample, predicted_ids) -> float:
    """The teacher-forced oracle: 1.0 iff every answer position is predicted right."""
    return float(list(predicted_ids) == list(sample.answer_ids))


def generated(generate, tokenizer, length, depth, n, seed, chat):
    """``n`` samples of a task generator: deterministic for a seed, and meeting the sample contract."""
    samples = generate(tokenizer, length, depth, n, seed=seed, use_chat_template=chat)
    assert samples == generate(tokenizer, length, depth, n, seed=seed, use_chat_template=chat)
    check_contract(tokenizer, samples, length)
    return samples


def check_contract(tokenizer, samples, length, expected_answers=None):
    for s in samples:
        assert len(s.input_ids) + len(s.answer_ids) == length
        assert s.answer_ids == tokenizer(" " + s.answer, add_special_tokens=False).input_ids
        assert tokenizer.decode(s.answer_ids).strip() == s.answer
        assert exact_match(s, s.answer_ids) == 1.0
        wrong = list(s.answer_ids)
        wrong[-1] = (wrong[-1] + 1) % len(tokenizer)
        assert exact_match(s, wrong) == 0.0
    if expected_answers is not None:
        assert [s.answer for s in samples] == expected_answers


# ----------------------------------------------------------------------------- filler


def test_filler_is_real_exact_deterministic_and_wraps(tokenizer):
    ids, sent = filler.corpus_ids(tokenizer)
    assert len(ids) > 50_000 and len(sent) > 1000  # real text with many sentences
    a = filler.filler_ids(tokenizer, 300, seed=1)
    assert a == filler.filler_ids(tokenizer, 300, seed=1)
    assert a != filler.filler_ids(tokenizer, 300, seed=2)
    assert len(a) == 300
    assert len(set(a)) > 100  # not one repeated sentence
    assert tokenizer.decode(a).lstrip()[0].isupper()  # starts at a sentence start
    long = filler.filler_ids(tokenizer, len(ids) + 500, seed=3)  # wraps around the corpus
    assert len(long) == len(ids) + 500
    assert filler.filler_ids(tokenizer, 0, seed=0) == []


def test_insert_items_and_anchored_layout():
    import random

    f = list(range(100, 120))
    out, starts = filler.insert_items(f, [[1, 1], [2], [3]], [(5, 1), (5, 0), (20, 2)])
    assert out[5:8] == [2, 1, 1] and starts == [6, 5, 23] and len(out) == 24
    rng = random.Random(0)
    for t in (0, 7, 30):
        anchor, keys = filler.anchored_layout(rng, 30, t, [4, 5, 6])
        hay, st = filler.insert_items(list(range(1000, 1015)), [[-1]] + [[-2] * n for n in (4, 5, 6)],
                                      [(anchor, 1)] + keys)
        assert st[0] == t and len(hay) == 31


# ----------------------------------------------------------------------------- needle


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
def test_needle_contract(tokenizer, chat, depth):
    length = 700
    samples = generated(needle.generate_needle, tokenizer, length, depth, 3, seed=5, chat=chat)
    for s in samples:
        dish, word = s.meta["needle"].split("=")
        assert s.answer == word
        ids = tokenizer(f" The special ingredient of the {dish} recipe is {word}.", add_special_tokens=False).input_ids
        where = find_all(s.input_ids, ids)
        assert where == [s.meta["needle_offset"]]
        assert s.meta["needle_offset"] == s.meta["haystack_start"] + round(depth * s.meta["haystack_len"])
        frame = prompt_frame(tokenizer, chat, f"The special ingredient of the {dish} recipe is")
        assert s.input_ids[: len(frame.prefix_ids)] == frame.prefix_ids
        assert s.input_ids[-len(frame.suffix_ids):] == frame.suffix_ids
    if chat:
        assert "<|im_start|>assistant" in tokenizer.decode(samples[0].input_ids)


def test_needle_seed_changes_samples_and_small_length_raises(tokenizer):
    a = needle.generate_needle(tokenizer, 600, 0.5, 4, seed=1, use_chat_template=False)
    b = needle.generate_needle(tokenizer, 600, 0.5, 4, seed=2, use_chat_template=False)
    assert [s.input_ids for s in a] != [s.input_ids for s in b]
    # same seed, other length: same needle (comparable cells)
    c = needle.generate_needle(tokenizer, 900, 0.5, 4, seed=1, use_chat_template=False)
    assert [s.answer for s in a] == [s.answer for s in c]
    with pytest.raises(ValueError):
        needle.generate_needle(tokenizer, 30, 0.5, 1, seed=1, use_chat_template=True)


def test_needle_heatmap(tmp_path):
    results = {(L, d): (L + d * 1000) % 3 / 2 for L in (1024, 2048, 4096) for d in (0.0, 0.5, 1.0)}
    png = needle.needle_heatmap(results, tmp_path / "plots" / "niah.png")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- RULER


@pytest.mark.parametrize("depth", [0.0, 0.6, 1.0])
def test_multikey(tokenizer, depth):
    length = 900
    samples = generated(ruler.generate_multikey, tokenizer, length, depth, 3, seed=0, chat=True)
    for s in samples:
        keys, values, key = s.meta["keys"], s.meta["values"], s.meta["key"]
        assert len(set(keys)) == 4 and s.answer == values[keys.index(key)]
        offsets = []
        for k, v in zip(keys, values):  # every needle (target and distractors) is there once
            where = find_all(s.input_ids, ruler._magic_needle(tokenizer, k, v))
            assert len(where) == 1
            offsets.append(where[0])
        assert offsets == s.meta["needle_offsets"]
        assert offsets[keys.index(key)] == s.meta["needle_offset"]
        assert s.meta["needle_offset"] == s.meta["haystack_start"] + round(depth * s.meta["haystack_len"])


@pytest.mark.parametrize("depth", [0.0, 0.25, 1.0, None])
def test_multivalue(tokenizer, depth):
    length = 1000
    samples = generated(ruler.generate_multivalue, tokenizer, length, depth, 3, seed=3, chat=False)
    for s in samples:
        key, values = s.meta["key"], s.meta["values"]
        offs = [find_all(s.input_ids, ruler._magic_needle(tokenizer, key, v)) for v in values]
        assert all(len(o) == 1 for o in offs)
        in_text_order = [v for _, v in sorted(zip([o[0] for o in offs], values))]
        assert s.answer == ", ".join(in_text_order)
        d = s.meta["depth"]
        assert offs[0][0] == s.meta["needle_offset"] == s.meta["haystack_start"] + round(d * s.meta["haystack_len"])


@pytest.mark.parametrize("depth", [None, 0.0, 0.5, 1.0])
def test_variable_tracking(tokenizer, depth):
    length = 800
    samples = generated(ruler.generate_variable_tracking, tokenizer, length, depth, 3, seed=9, chat=True)
    for s in samples:
        names, value = s.meta["variables"], s.meta["value"]
        assert len(names) == 5 and s.answer == ", ".join(names)
        stmts = [f" VAR {names[0]} = {value}."] + [f" VAR {names[j + 1]} = VAR {names[j]}." for j in range(4)]
        pos = [find_all(s.input_ids, tokenizer(t, add_special_tokens=False).input_ids) for t in stmts]
        assert all(len(p) == 1 for p in pos)
        pos = [p[0] for p in pos]
        assert pos == sorted(pos) == s.meta["needle_offsets"]  # chain order kept in the text
        if depth is not None:
            assert pos[0] == s.meta["haystack_start"] + round(depth * s.meta["haystack_len"])


def test_variable_tracking_distractor_chains(tokenizer):
    s = ruler.generate_variable_tracking(tokenizer, 900, None, 1, seed=1, use_chat_template=False, num_chains=2)[0]
    text = tokenizer.decode(s.input_ids)
    assert len(re.findall(r"VAR [A-Z]{5} = \d{5}\.", text)) == 2
    assert len(re.findall(r"VAR [A-Z]{5} = VAR", text)) == 8


@pytest.mark.parametrize("length", [600, 1500])
def test_common_words(tokenizer, length):
    samples = generated(ruler.generate_common_words, tokenizer, length, None, 2, seed=4, chat=True)
    for s in samples:
        hs = s.meta["haystack_start"]
        text = tokenizer.decode(s.input_ids[hs : hs + s.meta["haystack_len"]])
        items = re.findall(r"(\d+)\. (\S+)", text)
        assert [int(n) for n, _ in items] == list(range(1, s.meta["num_items"] + 1))
        counts = {}
        for _, w in items:
            counts[w] = counts.get(w, 0) + 1
        common = s.meta["common"]
        assert all(counts[w] == 6 for w in common)  # RULER below 4096 tokens: 6 vs 1
        assert all(c <= 1 for w, c in counts.items() if w not in common)
        first = [w for _, w in items]
        assert common == sorted(common, key=first.index)  # equal counts: first appearance
        assert s.answer == ", ".join(common)
    with pytest.raises(ValueError):
        ruler.generate_common_words(tokenizer, length, 0.5, 1, seed=4, use_chat_template=True)
    with pytest.raises(ValueError):
        ruler.generate_common_words(tokenizer, 120, None, 1, seed=4, use_chat_template=True)


# ----------------------------------------------------------------------------- dialog recall


@pytest.mark.parametrize("depth", [None, 0.0, 0.1, 1.0])
def test_dialog_recall(tokenizer, depth):
    length = 800
    samples = generated(dialog_recall.generate_dialog_recall, tokenizer, length, depth, 3, seed=2, chat=True)
    for s in samples:
        city = s.meta["city"]
        assert s.answer == city
        fact = tokenizer(f"\nBob: By the way, my cousin lives in {city}.", add_special_tokens=False).input_ids
        assert find_all(s.input_ids, fact) == [s.meta["needle_offset"]]
        d = s.meta["depth"]
        assert s.meta["needle_offset"] == s.meta["haystack_start"] + round(d * s.meta["haystack_len"])
        if depth is None:
            assert 0.05 <= d <= 0.25
        text = tokenizer.decode(s.input_ids)
        assert "\nAlice: " in text and "\nBob: " in text
        assert "Where does Bob's cousin live?" in text
