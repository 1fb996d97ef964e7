"""Long multi-turn recall conversations built offline from the ``chitchat-dataset`` package.

Source text: the BYU PCC Chit-Chat Challenge corpus shipped in the PyPI package
``chitchat-dataset`` 0.9.0 (MIT licence): 7,168 real human-human conversations,
138,737 messages (consecutive utterances of one sender joined with a space, as the
package's own ``ConversationDataset`` does), 258,145 utterances, about 12.6 M characters.
Passages are the 2,358 conversations with at least 4 messages, at most 4,000 characters and
no empty message (48,180 messages, 3.5 M characters, about 1,490 characters each); half of
the corpus has only one or two messages, too little to ask about.

One training conversation looks like::

    user:      I'm going to share some chat transcripts ... Here is conversation #1:
               A: ...
               B: ...
    assistant: Got it, I've read conversation #1.
    user:      Here is conversation #2: ...
    ...                                         (passages fill most of the token budget)
    user:      Now some questions about the conversations I shared. In conversation #1,
               what did the other person reply right after "..."?
    assistant: <the exact next message>
    user:      Which conversation contained the message "..."?
    assistant: Conversation #4.
    ...

Answers are correct by construction: each question is only asked when its answer is
unique among the shared passages (the quoted message occurs once, is not contained in
another message, ...). Questions come after all passages and the first one always asks
about an early passage, so the model has to reach back across most of the context.
The form (quoted dialogue, conversation numbers) is deliberately unlike the evaluation
tasks (numeric pass keys, "the magic number is", key-value retrieval).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

INTRO = (
    "I'm going to share some chat transcripts with you, one at a time. Read them carefully; "
    "I'll ask you about them afterwards.\n\n"
)
PASSAGE = "Here is conversation #{k}:\n{text}"
ACKS = (
    "Got it, I've read conversation #{k}.",
    "Okay, conversation #{k} noted.",
    "Thanks, I have conversation #{k}.",
    "Understood. Conversation #{k} is noted.",
    "Noted, that was conversation #{k}.",
)
QUESTIONS_INTRO = "Now some questions about the conversations I shared. "
QUESTION_FORMS = {
    "next_reply": 'In conversation #{k}, what did the other person reply right after "{msg}"?',
    "previous_message": 'In conversation #{k}, what was said right before "{msg}"?',
    "which_conversation": 'Which conversation contained the message "{msg}"?',
    "first_message": "Quote the first message of conversation #{k}.",
}

# Passage eligibility: enough back-and-forth to ask about, short enough to fit many.
MIN_MESSAGES = 4
MAX_CHARS = 4000
# A message quoted in a question must be distinctive, not "lol" or "yes".
MIN_QUOTE_WORDS = 4
MIN_QUOTE_CHARS = 15
TURN_OVERHEAD_TOKENS = 8  # template tokens per message, for the length estimate only


@dataclass(frozen=True)
class ChitchatCorpus:
    """The chitchat conversations in file order: ``keys[i]`` and ``(speaker, text)`` messages."""

    keys: tuple[str, ...]
    conversations: tuple[tuple[tuple[str, str], ...], ...]
    eligible: tuple[int, ...]  # indices usable as passages


@lru_cache(maxsize=2)
def load_chitchat(path: str | None = None) -> ChitchatCorpus:
    """Load the packaged ``dataset.json`` (or a file in the same format) once per process.

    Speakers are labelled A (whoever speaks first) and B; messages are the package's
    sender-grouped messages with utterances joined by a space and outer whitespace stripped.
    """
    if path is None:
        import chitchat_dataset

        path = chitchat_dataset._PATH  # the package exposes no public accessor for the file
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    keys, convs, eligible = [], [], []
    for key, conv in raw.items():
        first = conv["messages"][0][0]["sender"] if conv["messages"] else None
        msgs = tuple(
            ("A" if m[0]["sender"] == first else "B", " ".join(u["text"] for u in m).strip())
            for m in conv["messages"]
        )
        if MIN_MESSAGES <= len(msgs) and sum(len(t) for _, t in msgs) <= MAX_CHARS and all(t for _, t in msgs):
            eligible.append(len(convs))
        keys.append(key)
        convs.append(msgs)
    return ChitchatCorpus(tuple(keys), tuple(convs), tuple(eligible))


def format_passage(messages: tuple[tuple[str, str], ...]) -> str:
    return "\n".join(f"{speaker}: {text}" for speaker, text in messages)


@dataclass(frozen=True)
class QA:
    """One question; ``number`` is the conversation number (#k) it is about."""

    kind: str
    number: int
    message_index: int  # index of the quoted (or, for first_message, answered) message
    question: str
    answer: str


@dataclass
class EmbeddedConversation:
    messages: list[dict]
    passages: list[str] = field(default_factory=list)  # chitchat key of conversation #k at [k-1]
    qa: list[QA] = field(default_factory=list)


def build_conversation(
    rng: random.Random,
    corpus: ChitchatCorpus,
    count_tokens: Callable[[str], int],
    target_tokens: int,
    num_questions: int,
) -> EmbeddedConversation:
    """Build one conversation of roughly ``target_tokens`` tokens (an estimate; the caller
    checks the exact templated length and retries with a smaller target if needed)."""
    numbers: list[int] = []  # corpus index of conversation #k at position k-1
    texts: list[str] = []
    used: set[int] = set()
    answer_reserve = num_questions * 80  # question + answer tokens, generous
    budget = max(target_tokens - answer_reserve, 0)
    spent = 0
    misses = 0
    # Keep adding passages; after a passage that does not fit, try a few smaller ones
    # before stopping so the budget is filled reasonably tightly.
    while misses < 8:
        idx = corpus.eligible[rng.randrange(len(corpus.eligible))]
        if idx in used:
            misses += 1
            continue
        text = format_passage(corpus.conversations[idx])
        cost = count_tokens(text) + 2 * TURN_OVERHEAD_TOKENS + 24
        if spent + cost > budget and len(numbers) >= 2:
            misses += 1
            continue
        used.add(idx)
        numbers.append(idx)
        texts.append(text)
        spent += cost
        if spent > budget:  # forced in to reach two passages
            break

    out = EmbeddedConversation(messages=[], passages=[corpus.keys[i] for i in numbers])
    for k, text in enumerate(texts, start=1):
        user = (INTRO if k == 1 else "") + PASSAGE.format(k=k, text=text)
        out.messages.append({"role": "user", "content": user})
        out.messages.append({"role": "assistant", "content": rng.choice(ACKS).format(k=k)})

    convs = [corpus.conversations[i] for i in numbers]
    out.qa = _questions(rng, convs, num_questions)
    for j, qa in enumerate(out.qa):
        out.messages.append({"role": "user", "content": (QUESTIONS_INTRO if j == 0 else "") + qa.question})
        out.messages.append({"role": "assistant", "content": qa.answer})
    return out


def _questions(rng: random.Random, convs: list, num_questions: int) -> list[QA]:
    """Pick distinct, unambiguous questions; the first is about the earliest third of passages."""
    n = len(convs)
    texts = [[t for _, t in c] for c in convs]
    chosen: list[QA] = []
    seen: set[tuple[str, int, int]] = set()
    for _ in range(num_questions * 30):
        if len(chosen) == num_questions:
            break
        early = not chosen
        k0 = rng.randrange(max(1, n // 3)) if early else rng.randrange(n)
        kind = rng.choice(tuple(QUESTION_FORMS))
        qa = _make_question(rng, kind, k0, texts)
        if qa is None or (qa.kind, qa.number, qa.message_index) in seen:
            continue
        seen.add((qa.kind, qa.number, qa.message_index))
        chosen.append(qa)
    if not chosen:  # first_message is always answerable
        chosen.append(_make_question(rng, "first_message", 0, texts))
    return chosen


def _distinctive(msg: str) -> bool:
    return len(msg) >= MIN_QUOTE_CHARS and len(msg.split()) >= MIN_QUOTE_WORDS and '"' not in msg


def _make_question(rng: random.Random, kind: str, k0: int, texts: list[list[str]]) -> QA | None:
    """Question of ``kind`` about passage index ``k0`` (0-based), or None if none is unambiguous."""
    msgs = texts[k0]
    k = k0 + 1
    if kind == "first_message":
        return QA(kind, k, 0, QUESTION_FORMS[kind].format(k=k), msgs[0])

    def unique_in(j: int, pool: list[str]) -> bool:
        # the quoted message occurs exactly once in pool and is not part of another message
        return sum(msgs[j] in other for other in pool) == 1

    if kind == "next_reply":
        candidates = [j for j in range(len(msgs) - 1) if _distinctive(msgs[j]) and unique_in(j, msgs)]
        answer_of = lambda j: msgs[j + 1]  # noqa: E731
    elif kind == "previous_message":
        candidates = [j for j in range(1, len(msgs)) if _distinctive(msgs[j]) and unique_in(j, msgs)]
        answer_of = lambda j: msgs[j - 1]  # noqa: E731
    elif kind == "which_conversation":
        others = [t for i, c in enumerate(texts) if i != k0 for t in c]
        candidates = [
            j
            for j in range(len(msgs))
            if _distinctive(msgs[j]) and not any(msgs[j] in t for t in others)
        ]
        answer_of = lambda j: f"Conversation #{k}."  # noqa: E731
    else:
        raise ValueError(f"unknown question kind {kind!r}")
    if not candidates:
        return None
    j = rng.choice(candidates)
    return QA(kind, k, j, QUESTION_FORMS[kind].format(k=k, msg=msgs[j]), answer_of(j))
