"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention", arXiv 2305.16300, Sec. 4.2).

A 5-digit key is hidden at a chosen depth inside the task's classic repeated filler; the model
must say it. The filler is deliberately trivial: the test asks only whether positions far
beyond the native window can still be attended to. Harder needle tasks on real text live in
``needle.py`` and ``ruler.py``.
"""

from __future__ import annotations

import random

from longctx.evaluation.filler import anchored_layout, insert_items
from longctx.evaluation.needle import budget
from longctx.evaluation.samples import EvalSample, answer_token_ids, prompt_frame

INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "\nWhat is the pass key?"
ANSWER_PREFIX = "The pass key is"
# Distractor keys are named like the pass key but with another word, so only the name tells them apart.
# Samples of one (length, depth) cell must be independent draws, not one layout with other digits: the filler
# is periodic, so the needle's place is what varies. Each sample's needle sits at a depth drawn uniformly within
# +-DEPTH_JITTER of the cell's depth (the band cut to [0, 1]). With one fixed place per cell, the GPU headline run
# (docs/RESULTS.md, eighth run) scored every cell all-or-nothing: ten "samples" were one observation.
DEPTH_JITTER = 0.05
DISTRACTOR_NAMES = ["backup", "spare", "old", "guest", "office", "garage", "locker", "gate",
                    "vault", "cellar", "cabinet", "mailbox", "bike", "attic", "shed", "studio"]


def key_sentence(name: str, value: str) -> str:
    return f" The {name} key is {value}. Remember it. {value} is the {name} key. "


def generate_passkey(tokenizer, length: int, depth: float, num_samples: int, seed: int,
                     use_chat_template: bool, distractors: int = 0) -> list[EvalSample]:
    """``num_samples`` prompts of exactly ``length`` tokens (answer included), key at ``depth``.

    ``distractors`` (difficulty knob, default 0 = the original task): that many other keys, each
    "The <name> key is <5 digits>" with a different name and a value never equal to the pass key,
    at seeded uniform places around it (RULER's distractor needles, arXiv 2404.06654). The pass key
    starts at ``round(d * haystack_len)`` of the haystack (filler plus distractors), where ``d`` is drawn
    per sample uniformly within ``depth +- DEPTH_JITTER`` (the band cut to [0, 1]) and kept in ``meta["needle_depth"]``.
    """
    if not 0 <= distractors <= len(DISTRACTOR_NAMES):
        raise ValueError(f"eval.passkey.distractors: must be in [0, {len(DISTRACTOR_NAMES)}], got {distractors}")
    frame = prompt_frame(tokenizer, use_chat_template, ANSWER_PREFIX)
    enc = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    instruction, filler, question = enc(INSTRUCTION), enc(FILLER), enc(QUESTION)
    rng = random.Random(f"passkey-{seed}-{length}-{depth}")
    samples = []
    for index in range(num_samples):
        key = str(rng.randint(10000, 99999))
        needle = enc(key_sentence("pass", key))
        answer = answer_token_ids(tokenizer, key)
        # a separate stream, so the default task (no distractors) draws exactly what it always drew
        drng = random.Random(f"passkey-distractors-{seed}-{length}-{depth}-{index}")
        values: list[str] = []
        while len(values) < distractors:
            v = str(drng.randint(10000, 99999))
            if v != key and v not in values:
                values.append(v)
        names = drng.sample(DISTRACTOR_NAMES, distractors)
        decoys = [enc(key_sentence(n, v)) for n, v in zip(names, values)]
        haystack_len = budget(length, frame.prefix_ids, frame.suffix_ids, instruction, needle, question, answer)
        filler_len = haystack_len - sum(map(len, decoys))
        if filler_len < 1:
            raise ValueError(f"eval.lengths: {length} is too short for a passkey prompt with {distractors} distractors")
        lrng = random.Random(f"passkey-layout-{seed}-{length}-{depth}-{index}")  # its own stream: keys unchanged
        needle_depth = lrng.uniform(max(0.0, depth - DEPTH_JITTER), min(1.0, depth + DEPTH_JITTER))
        at = round(needle_depth * haystack_len)
        anchor, places = anchored_layout(drng, haystack_len, at, [len(d) for d in decoys])
        haystack, starts = insert_items((filler * (filler_len // len(filler) + 1))[:filler_len],
                                        [needle, *decoys], [(anchor, 1), *places])
        input_ids = frame.prefix_ids + instruction + haystack + question + frame.suffix_ids
        start = len(frame.prefix_ids) + len(instruction)
        meta = {"needle_offset": start + starts[0], "needle_depth": needle_depth}
        if distractors:
            meta |= {"distractors": values, "distractor_offsets": [start + s for s in starts[1:]]}
        samples.append(EvalSample("passkey", length, depth, index, input_ids, answer, key, meta))
    return samples
