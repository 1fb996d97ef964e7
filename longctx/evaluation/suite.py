"""The evaluation suite: which samples to make from the eval params, and how to turn scores into metrics.

Samples are generated once (stage ``eval_samples``) and stored, so the base model and every
extended model are scored on byte-identical prompts. Metric keys are flat and readable:
``passkey.16384`` (mean over depths), ``passkey.16384.d0.2``, ``ppl.16384``, ``ppl.16384.bucket3``.
"""

from __future__ import annotations

import time
from collections import defaultdict

from longctx.evaluation.passkey import generate_passkey
from longctx.evaluation.perplexity import generate_perplexity, perplexity_metrics, token_nll
from longctx.evaluation.samples import EvalSample
from longctx.evaluation.scoring import score_samples
from longctx.params import EvalParams


def make_eval_samples(tokenizer, ep: EvalParams) -> list[EvalSample]:
    samples: list[EvalSample] = []
    if ep.passkey.enabled:
        for length in ep.passkey.lengths or ep.lengths:
            for depth in ep.passkey.depths:
                samples += generate_passkey(tokenizer, length, depth, ep.passkey.samples, ep.seed,
                                            ep.use_chat_template)
    if ep.perplexity.enabled:
        for length in ep.perplexity.lengths or ep.lengths:
            samples += generate_perplexity(tokenizer, length, ep.seed)
    return samples


def evaluate_model(model, samples: list[EvalSample], ep: EvalParams) -> dict:
    """Score every sample; return flat metrics."""
    import torch
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    metrics: dict[str, float] = {}
    answer_tasks = [s for s in samples if s.answer_ids]
    correct = score_samples(model, answer_tasks, ep.batch_size, desc="passkey")
    by_length = defaultdict(list)
    by_depth = defaultdict(list)
    for s, ok in zip(answer_tasks, correct):
        by_length[(s.task, s.length)].append(ok)
        by_depth[(s.task, s.length, s.depth)].append(ok)
    for (task, length), oks in by_length.items():
        metrics[f"{task}.{length}"] = sum(oks) / len(oks)
    for (task, length, depth), oks in by_depth.items():
        metrics[f"{task}.{length}.d{depth:g}"] = sum(oks) / len(oks)

    device = next(model.parameters()).device
    for s in tqdm([s for s in samples if s.task == "perplexity"], desc="perplexity", unit="window"):
        nll = token_nll(model, torch.tensor([s.input_ids], device=device))
        for key, value in perplexity_metrics(nll, ep.perplexity.buckets).items():
            metrics[f"ppl.{s.length}" if key == "ppl" else f"ppl.{s.length}.{key}"] = round(value, 4)
    # Wall time is printed, not stored: metrics must be identical run to run for identical inputs.
    print(f"evaluated {len(samples)} samples in {time.perf_counter() - t0:.1f} s")
    return dict(sorted(metrics.items()))
