"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention", arXiv 2305.16300, Sec. 4.2).

A 5-digit key is hidden at a chosen depth inside the task's classic repeated filler; the model
must say it. The filler is deliberately trivial: the test asks only whether positions far
beyond the native window can still be attended to. Harder needle tasks on real text live in
``needle.py`` and ``ruler.py``.
"""

from __future__ import annotations

import random

from longctx.evaluation.samples import EvalSample, answer_token_ids, prompt_frame

INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "\nWhat is the pass key?"
ANSWER_PREFIX = "The pass key is"


def generate_passkey(tokenizer, length: int, depth: float, num_samples: int, seed: int,
                     use_chat_template: bool) -> list[EvalSample]:
    """``num_samples`` prompts of exactly ``length`` tokens (answer included), key at ``depth``."""
    frame = prompt_frame(tokenizer, use_chat_template, ANSWER_PREFIX)
    enc = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    instruction, filler, question = enc(INSTRUCTION), enc(FILLER), enc(QUESTION)
    rng = random.Random(f"passkey-{seed}-{length}-{depth}")
    samples = []
    for index in range(num_samples):
        key = str(rng.randint(10000, 99999))
        needle = enc(f" The pass key is {key}. Remember it. {key} is the pass key. ")
        answer = answer_token_ids(tokenizer, key)
        haystack_len = length - frame.overhead - len(instruction) - len(needle) - len(question) - len(answer)
        if haystack_len < 1:
            raise ValueError(f"eval.lengths: {length} is too short for a passkey prompt")
        haystack = (filler * (haystack_len // len(filler) + 1))[:haystack_len]
        at = round(depth * haystack_len)
        body = instruction + haystack[:at] + needle + haystack[at:] + question
        input_ids = frame.prefix_ids + body + frame.suffix_ids
        offset = len(frame.prefix_ids) + len(instruction) + at
        samples.append(EvalSample("passkey", length, depth, index, input_ids, answer, key,
                                  {"needle_offset": offset}))
    return samples
