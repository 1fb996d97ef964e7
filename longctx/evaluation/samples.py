"""The one sample format every evaluation task produces, and token-exact prompt assembly.

Prompts are assembled in token space (lists of ids concatenated), never by concatenating
text and re-tokenising, so a needle placed at depth d really sits at token offset
``round(d * haystack_len)`` and a sample built for length L is exactly L tokens long.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

PLACEHOLDER = "\u2063CONTEXT\u2063"  # invisible separator: never appears in real text


@dataclass(frozen=True)
class EvalSample:
    """One evaluation item.

    ``input_ids`` is the whole prompt (chat template included) up to the point where the
    answer starts; ``answer_ids`` are the tokens the model should produce next. Scoring by
    teacher forcing feeds ``input_ids + answer_ids`` once and checks the greedy prediction at
    every answer position.
    """

    task: str
    length: int  # nominal context length in tokens (the key used in metrics)
    depth: float | None  # needle depth in [0, 1]; None for tasks without one
    index: int  # sample number within (task, length, depth)
    input_ids: list[int]
    answer_ids: list[int]
    answer: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PromptFrame:
    """Token ids that surround the task content: chat template prefix and suffix, answer prefix."""

    prefix_ids: list[int]
    suffix_ids: list[int]  # end of user turn + assistant header + answer prefix

    @property
    def overhead(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)


def prompt_frame(tokenizer, use_chat_template: bool, answer_prefix: str) -> PromptFrame:
    """Split the (optional) chat template around the user content, in token ids.

    The template is rendered once with a placeholder as the user message; the text before
    and after it is tokenised separately. ``answer_prefix`` (e.g. "The pass key is") is put at
    the start of the assistant turn so the answer tokens follow deterministically.
    """
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": PLACEHOLDER}], tokenize=False, add_generation_prompt=True
        )
        before, after = text.split(PLACEHOLDER)
        prefix = tokenizer(before, add_special_tokens=False).input_ids
        suffix = tokenizer(after + answer_prefix, add_special_tokens=False).input_ids
        return PromptFrame(prefix, suffix)
    # Plain completion: whatever special tokens the tokenizer itself puts first (e.g. BOS), and the
    # answer prefix continuing the question's line, as in the original passkey prompt.
    with_special = tokenizer("x").input_ids
    plain = tokenizer("x", add_special_tokens=False).input_ids
    prefix = with_special[: len(with_special) - len(plain)] if with_special[-len(plain):] == plain else []
    return PromptFrame(prefix, tokenizer(" " + answer_prefix, add_special_tokens=False).input_ids)


def answer_token_ids(tokenizer, answer: str) -> list[int]:
    """Answer tokens as they follow the answer prefix (a leading space, as in running text)."""
    return tokenizer(" " + answer, add_special_tokens=False).input_ids


def save_samples(samples: list[EvalSample], path: Path) -> None:
    """Write samples as JSON lines (sorted keys), so identical inputs give identical bytes."""
    from longctx.io import atomic_write_text

    lines = [json.dumps(asdict(s), sort_keys=True) for s in samples]
    atomic_write_text(path, "\n".join(lines) + "\n")


def load_samples(path: Path) -> list[EvalSample]:
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                out.append(EvalSample(**json.loads(line)))
    return out
