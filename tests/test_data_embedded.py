"""The embedded chitchat builder: every answer checked against the raw dataset.json.

The raw JSON is loaded here independently of ``longctx.data.embedded`` (no shared helpers),
each shared passage is matched to its chitchat conversation by key, and every question is
re-answered from the raw messages.
"""

import json
import random
import re

import chitchat_dataset
import pytest

from longctx.data.embedded import build_conversation, load_chitchat


@pytest.fixture(scope="module")
def raw():
    with open(chitchat_dataset._PATH, encoding="utf-8") as f:
        return json.load(f)


def raw_messages(raw, key):
    return [" ".join(u["text"] for u in m).strip() for m in raw[key]["messages"]]


def word_count(text):
    return len(text.split()) * 4 // 3 + 1


def test_corpus_size():
    corpus = load_chitchat()
    assert len(corpus.keys) == 7168
    assert sum(len(c) for c in corpus.conversations) == 138737
    assert len(corpus.eligible) == 2358  # >= 4 messages, <= 4000 characters, no empty message


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_answers_are_correct_against_raw_data(raw, seed):
    corpus = load_chitchat()
    conv = build_conversation(random.Random(seed), corpus, word_count, target_tokens=3000, num_questions=4)
    msgs = conv.messages
    assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
    n = len(conv.passages)
    assert n >= 2 and len(set(conv.passages)) == n

    # Passages: "Here is conversation #k:" followed by the raw messages as "A:/B:" lines.
    shared = {}
    for k in range(1, n + 1):
        user = msgs[2 * (k - 1)]["content"]
        m = re.search(r"Here is conversation #(\d+):\n(.*)\Z", user, re.S)
        assert m and int(m.group(1)) == k
        lines = [re.sub(r"^[AB]: ", "", line) for line in m.group(2).split("\n")]
        assert lines == raw_messages(raw, conv.passages[k - 1])
        shared[k] = lines
        assert f"#{k}" in msgs[2 * (k - 1) + 1]["content"]  # the acknowledgement

    qa_turns = msgs[2 * n :]
    assert len(qa_turns) == 2 * len(conv.qa) >= 2
    assert conv.qa[0].number <= max(1, n // 3)  # the first question reaches back
    for q, a in zip(qa_turns[::2], qa_turns[1::2]):
        question, answer = q["content"], a["content"]
        if m := re.search(r'In conversation #(\d+), what did the other person reply right after "(.*)"\?$', question):
            lines = shared[int(m.group(1))]
            hits = [i for i, t in enumerate(lines) if m.group(2) in t]
            assert len(hits) == 1 and lines[hits[0]] == m.group(2)
            assert answer == lines[hits[0] + 1]
        elif m := re.search(r'In conversation #(\d+), what was said right before "(.*)"\?$', question):
            lines = shared[int(m.group(1))]
            hits = [i for i, t in enumerate(lines) if m.group(2) in t]
            assert len(hits) == 1 and hits[0] >= 1
            assert answer == lines[hits[0] - 1]
        elif m := re.search(r'Which conversation contained the message "(.*)"\?$', question):
            owners = {k for k, lines in shared.items() if any(m.group(1) in t for t in lines)}
            assert len(owners) == 1
            assert answer == f"Conversation #{owners.pop()}."
        elif m := re.search(r"Quote the first message of conversation #(\d+)\.$", question):
            assert answer == shared[int(m.group(1))][0]
        else:
            pytest.fail(f"unexpected question form: {question!r}")


def test_deterministic_and_seed_dependent():
    corpus = load_chitchat()
    a = build_conversation(random.Random(7), corpus, word_count, 2000, 3).messages
    b = build_conversation(random.Random(7), corpus, word_count, 2000, 3).messages
    c = build_conversation(random.Random(8), corpus, word_count, 2000, 3).messages
    assert a == b and a != c


def test_no_eval_task_phrasing():
    corpus = load_chitchat()
    conv = build_conversation(random.Random(0), corpus, word_count, 2000, 4)
    text = " ".join(m["content"] for m in conv.messages[-8:]).lower()
    assert "pass key" not in text and "passkey" not in text and "magic number" not in text
