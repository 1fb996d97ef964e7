"""Chat template application and the assistant-only loss mask.

Why not ``return_assistant_tokens_mask``: it needs ``{% generation %}`` markers in the
template, and ChatML templates (SmolLM2's included) have none. Instead the template is
rendered incrementally and the character span of every assistant reply is located by
difference:

* ``render(messages[:i])``                            -> text before turn ``i``
* ``render(messages[:i], add_generation_prompt=True)`` -> ... plus the assistant header
* ``render(messages[:i + 1])``                        -> ... plus content and end of turn

The labelled span of assistant turn ``i`` runs from the end of the header to the end of
the turn with trailing whitespace removed, i.e. ``content<|im_end|>`` in ChatML (the
newline the template puts after ``<|im_end|>`` is not something the model must emit).
The whole conversation is then tokenised ONCE (fast tokenizers give character offsets),
so ``input_ids`` are exactly what the model sees when the same text is tokenised at
inference time; a token is labelled when it starts inside an assistant span.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class EncodedConversation:
    """A templated, tokenised conversation.

    ``turn_ends[i]`` is the token index just past message ``i`` (so ``input_ids[:turn_ends[i]]``
    is the conversation up to and including message ``i``); used to truncate at turn
    boundaries.
    """

    input_ids: list[int]
    labels: list[int]
    roles: tuple[str, ...]
    turn_ends: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)


def normalize_messages(messages: list[dict]) -> list[dict] | None:
    """Trim a conversation to something worth training on, or return None.

    Leading assistant turns (after an optional system prompt) are removed: they answer
    nothing and templates treat an assistant-first conversation inconsistently. Trailing
    non-assistant turns are removed: they carry no loss. None means no assistant turn is left.
    """
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    start = 1 if msgs and msgs[0]["role"] == "system" else 0
    while start < len(msgs) and msgs[start]["role"] == "assistant":
        del msgs[start]
    while msgs and msgs[-1]["role"] != "assistant":
        msgs.pop()
    if not any(m["role"] == "assistant" for m in msgs):
        return None
    return msgs


def encode_conversation(tokenizer, messages: list[dict]) -> EncodedConversation:
    """Apply the tokenizer's chat template and build labels (-100 outside assistant replies).

    ``messages`` should come from ``normalize_messages`` (no leading assistant turn).
    Raises ValueError when the tokenizer has no chat template or when the template is not
    prefix-stable (rendering a longer conversation changes the text of earlier turns, as
    templates that strip earlier reasoning do), since then no per-turn mask is well defined.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat_template; cannot build SFT samples")

    def render(msgs, gen=False) -> str:
        if not msgs:
            return ""
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    spans: list[tuple[int, int]] = []  # labelled character spans
    turn_end_chars: list[int] = []
    prev = ""
    for i, msg in enumerate(messages):
        full = render(messages[: i + 1])
        if not full.startswith(prev):
            raise ValueError(f"chat template is not prefix-stable at message {i}; cannot mask per turn")
        if msg["role"] == "assistant":
            head = render(messages[:i], gen=True)
            if not (head.startswith(prev) and full.startswith(head)):
                raise ValueError(
                    f"chat template's generation prompt does not prefix assistant message {i}"
                )
            end = len(full.rstrip())
            if end > len(head):
                spans.append((len(head), end))
        turn_end_chars.append(len(full))
        prev = full

    ids, cut_tokens = _tokenize_with_cuts(tokenizer, prev, sorted({c for s in spans for c in s} | set(turn_end_chars)))
    labels = [IGNORE_INDEX] * len(ids)
    for a, b in spans:
        for t in range(cut_tokens[a], cut_tokens[b]):
            labels[t] = ids[t]
    return EncodedConversation(
        input_ids=ids,
        labels=labels,
        roles=tuple(m["role"] for m in messages),
        turn_ends=tuple(cut_tokens[c] for c in turn_end_chars),
    )


def _tokenize_with_cuts(tokenizer, text: str, cuts: list[int]) -> tuple[list[int], dict[int, int]]:
    """Tokenise ``text``; map each character cut point to the first token starting at/after it.

    Fast tokenizers: one pass with offsets (exact ids). Slow tokenizers (no offsets): the text
    is tokenised piece by piece between cut points; with ChatML-like templates the cuts fall
    next to special tokens, so this gives the same ids.
    """
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        starts = [s for s, _ in enc["offset_mapping"]]
        return ids, {c: bisect_left(starts, c) for c in cuts}
    ids: list[int] = []
    where: dict[int, int] = {0: 0}
    prev = 0
    for c in cuts:
        if c > prev:
            ids.extend(tokenizer(text[prev:c], add_special_tokens=False)["input_ids"])
        where[c] = len(ids)
        prev = max(prev, c)
    if prev < len(text):
        ids.extend(tokenizer(text[prev:], add_special_tokens=False)["input_ids"])
    return ids, where


def fit_to_length(
    enc: EncodedConversation, max_tokens: int, min_tokens: int, overlong: str
) -> tuple[tuple[list[int], list[int]] | None, str]:
    """Apply the length policy. Returns ``((input_ids, labels), status)`` or ``(None, reason)``.

    status is ``"ok"`` or ``"truncated"``; reasons are ``"too_long"``, ``"too_short"`` and
    ``"no_labels"``. Truncation keeps the longest prefix that ends right after a whole
    assistant turn, so the sample still ends with an answer.
    """
    ids, labels, status = enc.input_ids, enc.labels, "ok"
    if len(ids) > max_tokens:
        if overlong != "truncate":
            return None, "too_long"
        cut = max(
            (e for r, e in zip(enc.roles, enc.turn_ends) if r == "assistant" and e <= max_tokens),
            default=0,
        )
        if cut == 0:
            return None, "too_long"
        ids, labels, status = ids[:cut], labels[:cut], "truncated"
    if len(ids) < min_tokens:
        return None, "too_short"
    if all(x == IGNORE_INDEX for x in labels):
        return None, "no_labels"
    return (ids, labels), status
