"""The evaluation suite: which samples to make from the eval params, and how to turn scores into metrics.

Samples are generated once (stage ``eval_samples``) and stored, so the base model and every
extended model are scored on byte-identical prompts. Metric keys are flat and readable
(``metric_key.MetricKey`` writes them): ``passkey.16384`` (mean over depths), ``passkey.16384.d0.2``,
``ppl.16384``, ``ppl.16384.bucket3``; every accuracy cell also gets its 95% Wilson interval and
sample count, ``passkey.16384.lo`` / ``.hi`` / ``.n`` (``stats.wilson_interval``).
"""

from __future__ import annotations

import time
from collections import defaultdict

from pathlib import Path

from longctx.evaluation.dialog_recall import generate_dialog_recall
from longctx.evaluation.metric_key import MetricKey
from longctx.evaluation.needle import generate_needle
from longctx.evaluation.passkey import generate_passkey
from longctx.evaluation.perplexity import generate_perplexity, perplexity_metrics, token_nll
from longctx.evaluation.ruler import (generate_common_words, generate_multikey, generate_multivalue,
                                     generate_variable_tracking)
from longctx.evaluation.samples import EvalSample
from longctx.evaluation.scoring import greedy_agreement, greedy_generate, score_samples
from longctx.evaluation.stats import wilson_interval
from longctx.params import EvalParams


def make_eval_samples(tokenizer, ep: EvalParams) -> list[EvalSample]:
    samples: list[EvalSample] = []
    if ep.passkey.enabled:
        for length in ep.passkey.lengths or ep.lengths:
            for depth in ep.passkey.depths:
                samples += generate_passkey(tokenizer, length, depth, ep.passkey.samples, ep.seed,
                                            ep.use_chat_template, distractors=ep.passkey.distractors)
    if ep.perplexity.enabled:
        for length in ep.perplexity.lengths or ep.lengths:
            samples += generate_perplexity(tokenizer, length, ep.seed)
    for name, task in synthetic_tasks(ep):
        generate = SYNTHETIC[name]
        for length in task.lengths or ep.lengths:
            for depth in ([None] if name in DEPTHLESS else task.depths):
                samples += generate(tokenizer, length, depth, task.samples, ep.seed, ep.use_chat_template,
                                    **difficulty(name, task))
    if ep.longbench.enabled:
        samples += longbench_samples(tokenizer, ep)
    return samples


# Synthetic tasks by name -> generator; RULER's cwe and variable tracking spread their items instead of a depth.
SYNTHETIC = {
    "needle": generate_needle,
    "multikey": generate_multikey,
    "multivalue": generate_multivalue,
    "variable_tracking": generate_variable_tracking,
    "common_words": generate_common_words,
    "dialog_recall": generate_dialog_recall,
}
DEPTHLESS = ("variable_tracking", "common_words")


def difficulty(name: str, task) -> dict:
    """Difficulty knobs a task's generator takes from its params (each defaults to the original task)."""
    return {"needles": task.needles} if name == "needle" else {}


def synthetic_tasks(ep: EvalParams):
    """(task name, its params) for every enabled synthetic task."""
    if ep.needle.enabled:
        yield "needle", ep.needle
    if ep.ruler.enabled:
        for name in ep.ruler.tasks:
            yield name, ep.ruler
    if ep.dialog_recall.enabled:
        yield "dialog_recall", ep.dialog_recall


def longbench_samples(tokenizer, ep: EvalParams) -> list[EvalSample]:
    """LongBench prompts as samples to generate for (answers scored with each task's official metric)."""
    from longctx.evaluation.longbench import LONGBENCH_REVISION, load_longbench, longbench_prompts

    lb = ep.longbench
    out = []
    for task in lb.tasks:
        source = Path(lb.source) if lb.source else None
        records = load_longbench(task, source, lb.revision or LONGBENCH_REVISION, limit=lb.limit)
        for i, p in enumerate(longbench_prompts(records, task, tokenizer, lb.max_length, ep.use_chat_template)):
            out.append(EvalSample(f"longbench.{task}", lb.max_length, None, i, p["prompt_ids"], [], "",
                                  {"answers": p["answers"], "all_classes": p["all_classes"],
                                   "max_new_tokens": p["max_new_tokens"], "truncated": p["truncated"]}))
    return out


def evaluate_model(model, samples: list[EvalSample], ep: EvalParams, tokenizer=None) -> dict:
    """Score every sample; return flat metrics."""
    import torch
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    metrics: dict[str, float] = {}
    answer_tasks = [s for s in samples if s.answer_ids]
    correct = score_samples(model, answer_tasks, ep.batch_size, desc="retrieval tasks")
    metrics.update(accuracy_metrics(answer_tasks, correct))
    if ep.greedy_check and answer_tasks:
        # Teacher forcing must agree with real greedy decoding; report how often it does.
        checked = answer_tasks[: ep.greedy_check]
        agreement = greedy_agreement(model, checked, correct[: len(checked)])
        metrics[MetricKey("check.greedy_agreement").format()] = agreement
    metrics.update(longbench_metrics(model, tokenizer, [s for s in samples if s.task.startswith("longbench.")]))

    device = next(model.parameters()).device
    for s in tqdm([s for s in samples if s.task == "perplexity"], desc="perplexity", unit="window"):
        nll = token_nll(model, torch.tensor([s.input_ids], device=device))
        for key, value in perplexity_metrics(nll, ep.perplexity.buckets).items():
            metrics[MetricKey("ppl", s.length, detail=None if key == "ppl" else key).format()] = round(value, 4)
    # Wall time and peak memory are printed, not stored: metrics must be identical run to run for identical inputs.
    peak = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    print(f"evaluated {len(samples)} samples in {time.perf_counter() - t0:.1f} s{peak}")
    return dict(sorted(metrics.items()))


def accuracy_metrics(samples: list[EvalSample], correct: list[bool]) -> dict[str, float]:
    """Accuracy per (task, length) and per (task, length, depth), each with its 95% Wilson interval.

    ``<cell>`` = fraction correct, ``<cell>.lo`` / ``<cell>.hi`` = Wilson bounds (rounded to 4
    decimals), ``<cell>.n`` = samples in the cell.
    """
    cells = defaultdict(list)
    for s, ok in zip(samples, correct):
        cells[MetricKey(s.task, s.length)].append(ok)
        if s.depth is not None:
            cells[MetricKey(s.task, s.length, s.depth)].append(ok)
    metrics = {}
    for key, oks in cells.items():
        k, n = sum(oks), len(oks)
        lo, hi = wilson_interval(k, n)
        metrics[key.format()] = k / n
        metrics[key.with_stat("lo").format()] = round(lo, 4)
        metrics[key.with_stat("hi").format()] = round(hi, 4)
        metrics[key.with_stat("n").format()] = n
    return metrics


def longbench_metrics(model, tokenizer, samples: list[EvalSample]) -> dict:
    """Greedy answers for LongBench prompts, scored per task with LongBench's official metric (0-100)."""
    if not samples:
        return {}
    from tqdm.auto import tqdm

    from longctx.evaluation.longbench import score_longbench

    by_task = defaultdict(list)
    for s in tqdm(samples, desc="longbench", unit="prompt"):
        new_ids = greedy_generate(model, s.input_ids, s.meta["max_new_tokens"])
        by_task[s.task].append((tokenizer.decode(new_ids, skip_special_tokens=True), s))
    metrics = {}
    for task, pairs in by_task.items():
        name = task.split(".", 1)[1]
        preds = [p for p, _ in pairs]
        answers = [s.meta["answers"] for _, s in pairs]
        score = score_longbench(name, preds, answers, pairs[0][1].meta["all_classes"])
        metrics[MetricKey(task).format()] = round(score, 2)
    return metrics
