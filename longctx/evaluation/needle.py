"""Needle in a haystack on real filler text, and the length x depth accuracy heat map.

One needle ("The special ingredient of the <dish> recipe is <word>.") is hidden in real
filler (Python documentation, see ``filler.py``) with its first token at an exact token
offset ``round(depth * haystack_len)``; the model is asked for the ingredient and the answer
prefix makes the next tokens exactly the word. This is the single-needle NIAH of
Kamradt's "needle in a haystack" test and RULER's ``niah_single`` (arXiv 2404.06654), with
a word rather than a number as the value so that it cannot be guessed from digit priors.

Also home of the small assembly helpers the RULER tasks share (``budget``, ``make_sample``):
every prompt is ``frame.prefix_ids + intro + haystack + question + frame.suffix_ids`` and the
answer is ``answer_token_ids(answer)``, so ``len(input_ids) + len(answer_ids) == length``.
"""

from __future__ import annotations

import random
from pathlib import Path

from longctx.evaluation.filler import anchored_layout, haystack_filler, insert_items
from longctx.evaluation.samples import EvalSample, PromptFrame, answer_token_ids, prompt_frame

# Dishes and ingredients: plain single words, so the answer is short and unambiguous, and
# none of them is a Python term (the filler is Python documentation).
DISHES = [
    "lasagna", "risotto", "goulash", "paella", "moussaka", "curry", "chowder", "gumbo",
    "ratatouille", "stroganoff", "tagine", "borscht", "casserole", "pancake", "omelette",
    "dumpling", "burrito", "meatloaf", "gazpacho", "strudel", "souffle", "tiramisu",
    "brownie", "muffin", "pudding", "quiche", "lentil", "chili", "falafel", "hummus",
]
INGREDIENTS = [
    "saffron", "cardamom", "tamarind", "nutmeg", "anchovy", "molasses", "sumac", "fennel",
    "juniper", "lavender", "wasabi", "miso", "tarragon", "chestnut", "rhubarb", "pistachio",
    "marjoram", "coriander", "paprika", "turmeric", "vanilla", "caraway", "sorrel", "quince",
    "elderflower", "hazelnut", "mustard", "ginger", "oregano", "licorice",
]


def budget(length: int, *fixed_parts: list[int]) -> int:
    """Tokens left for the haystack after the fixed parts; ValueError if none are left."""
    left = length - sum(len(p) for p in fixed_parts)
    if left < 1:
        raise ValueError(
            f"length {length} is too small: frame + needle + question + answer take "
            f"{length - left} tokens"
        )
    return left


def make_sample(
    task: str,
    length: int,
    depth: float | None,
    index: int,
    frame: PromptFrame,
    intro: list[int],
    haystack: list[int],
    question: list[int],
    answer: str,
    answer_ids: list[int],
    meta: dict,
) -> EvalSample:
    """Concatenate the parts in token space and check the contract (exact length)."""
    input_ids = frame.prefix_ids + intro + haystack + question + frame.suffix_ids
    if len(input_ids) + len(answer_ids) != length:  # a bug, not a user error
        raise AssertionError(f"{task}: built {len(input_ids) + len(answer_ids)} tokens, want {length}")
    meta = {"haystack_start": len(frame.prefix_ids) + len(intro), **meta}
    return EvalSample(task, length, depth, index, input_ids, answer_ids, answer, meta)


def sample_rng(task: str, seed: int, index: int) -> random.Random:
    """Per-sample RNG. Seeded by a string (stable across runs, unlike ``hash``), and independent
    of length and depth, so sample i hides the same needle in every (length, depth) cell."""
    return random.Random(f"{task}|{seed}|{index}")


def tok(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _check_depth(depth: float) -> None:
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")


def generate_needle(tokenizer, length: int, depth: float | None, num_samples: int, seed: int,
                    use_chat_template: bool, needles: int = 1) -> list[EvalSample]:
    """Single-needle retrieval on real filler; with ``needles`` > 1, several needles, one asked.

    ``meta["needle_offset"]`` is the absolute token index of the asked needle's first token;
    inside the haystack (filler plus the other needles) it sits at ``round(depth * meta["haystack_len"])``.
    ``depth=None`` draws a seeded uniform depth per sample.

    ``needles`` (difficulty knob, default 1 = the single-needle task): the other ``needles - 1``
    sentences name other dishes and other ingredients (never the answer) and sit at seeded uniform
    places around the asked one, as RULER's ``niah_multikey_1``; ``meta["needle_offsets"]`` lists
    every needle, the asked one first.
    """
    if not 1 <= needles <= min(len(DISHES), len(INGREDIENTS)):
        raise ValueError(f"eval.needle.needles: must be in [1, {min(len(DISHES), len(INGREDIENTS))}], got {needles}")
    samples = []
    for i in range(num_samples):
        rng = sample_rng("needle", seed, i)
        dish, word = rng.choice(DISHES), rng.choice(INGREDIENTS)
        d = rng.random() if depth is None else depth
        _check_depth(d)
        # other needles from their own stream, so the single-needle task draws exactly what it always drew
        extra = sample_rng("needle-others", seed, i)
        others = list(zip(extra.sample([x for x in DISHES if x != dish], needles - 1),
                          extra.sample([x for x in INGREDIENTS if x != word], needles - 1)))
        frame = prompt_frame(tokenizer, use_chat_template, f"The special ingredient of the {dish} recipe is")
        intro = tok(tokenizer, "There is a special ingredient hidden in the following text. Find it and memorise it.\n\n")
        needle = tok(tokenizer, f" The special ingredient of the {dish} recipe is {word}.")
        decoys = [tok(tokenizer, f" The special ingredient of the {x} recipe is {w}.") for x, w in others]
        question = tok(tokenizer, f"\n\nWhat is the special ingredient of the {dish} recipe? Answer with one word.")
        answer_ids = answer_token_ids(tokenizer, word)
        hay_len = budget(length, frame.prefix_ids, frame.suffix_ids, intro, needle, question, answer_ids)
        offset = round(d * hay_len)
        anchor, places = anchored_layout(rng, hay_len, offset, [len(x) for x in decoys])
        filler = haystack_filler(tokenizer, hay_len - sum(map(len, decoys)), [anchor] + [p for p, _ in places], rng)
        haystack, starts = insert_items(filler, [needle, *decoys], [(anchor, 1), *places])
        hs = len(frame.prefix_ids) + len(intro)
        meta = {"needle": f"{dish}={word}", "haystack_len": hay_len, "depth": d, "needle_offset": hs + starts[0]}
        if needles > 1:
            meta |= {"others": [f"{x}={w}" for x, w in others], "needle_offsets": [hs + s for s in starts]}
        samples.append(make_sample("needle", length, depth, i, frame, intro, haystack, question, word, answer_ids, meta))
    return samples


def needle_heatmap(results: dict[tuple[int, float], float], path_png: str | Path, title: str = "Needle in a haystack") -> Path:
    """Plot accuracy over (context length, needle depth) as an annotated heat map.

    ``results[(length, depth)]`` is the accuracy in [0, 1]; missing cells are left blank.
    Lengths run along x, depths down y (0 = start of the context at the top), as in the
    usual NIAH plots.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: DVC stages run without a display
    import matplotlib.pyplot as plt
    import numpy as np

    lengths = sorted({k[0] for k in results})
    depths = sorted({k[1] for k in results})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for (L, d), acc in results.items():
        grid[depths.index(d), lengths.index(L)] = acc
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(lengths), 1.0 + 0.5 * len(depths)))
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    for r in range(len(depths)):
        for c in range(len(lengths)):
            if not np.isnan(grid[r, c]):
                ax.text(c, r, f"{grid[r, c]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [f"{L // 1024}k" if L >= 1024 else str(L) for L in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    from longctx.io import atomic_savefig

    return atomic_savefig(fig, path_png, dpi=120)
