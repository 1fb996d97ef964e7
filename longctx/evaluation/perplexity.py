"""Perplexity on long real text, overall and by position bucket.

The text is the Python documentation's topic pages (``pydoc_data.topics``, shipped with every
CPython, PSF licence, about 113k tokens with the SmolLM2 tokenizer). Per-bucket losses answer
"does the model still use the far tokens?": with a working extension the loss keeps falling
(or stays flat) in the last buckets; a broken one blows up past the native window.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from longctx.evaluation.samples import EvalSample
from longctx.modeling import reset_dynamic_rope


@lru_cache(maxsize=1)
def long_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def generate_perplexity(tokenizer, length: int, seed: int) -> list[EvalSample]:
    """One window of ``length`` tokens; longer texts slide (the offset depends on the seed and length)."""
    ids = tokenizer(long_text(), add_special_tokens=False).input_ids
    if len(ids) < length:
        raise ValueError(f"eval.lengths: {length} exceeds the perplexity text ({len(ids)} tokens)")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    span = length - len(bos)
    start = (seed * 7919 + length) % (len(ids) - span + 1)
    window = bos + ids[start:start + span]
    return [EvalSample("perplexity", length, None, 0, window, [], "", {"text_offset": start})]


@torch.no_grad()
def token_nll(model, input_ids: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Negative log-likelihood of tokens 1..L-1 of a (1, L) sequence, float32.

    The vocabulary projection runs in chunks so a 32k-token window never materialises a
    (32k x vocab) logits matrix at once.
    """
    reset_dynamic_rope(model)
    hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state[0]
    head = model.get_output_embeddings()
    targets = input_ids[0, 1:]
    out = []
    for s in range(0, targets.numel(), chunk):
        logits = head(hidden[s:s + chunk][: targets.numel() - s]).float()
        out.append(F.cross_entropy(logits, targets[s:s + chunk], reduction="none"))
    return torch.cat(out)


def perplexity_metrics(nll: torch.Tensor, buckets: int) -> dict:
    """{"ppl": exp(mean nll), "bucket_i": exp(mean nll of the i-th of ``buckets`` equal spans)}."""
    out = {"ppl": math.exp(nll.mean().item())}
    for i, part in enumerate(torch.tensor_split(nll, buckets)):
        out[f"bucket{i}"] = math.exp(part.mean().item())
    return out
