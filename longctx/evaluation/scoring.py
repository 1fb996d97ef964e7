"""Teacher-forced scoring: one forward pass per sample instead of a generation loop.

A sample is correct when, feeding prompt + answer once, the greedy (argmax) prediction at
every answer position is the answer token. That is exactly the condition for greedy decoding
to produce the answer, at the cost of a single prefill; ``greedy_agreement`` cross-checks it
against real generation on a few samples.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from tqdm.auto import tqdm

from longctx.evaluation.samples import EvalSample
from longctx.modeling import reset_dynamic_rope


@torch.no_grad()
def teacher_forced_correct(model, batch: list[EvalSample]) -> list[bool]:
    """Score samples of equal total length in one batched forward."""
    device = next(model.parameters()).device
    seqs = [s.input_ids + s.answer_ids for s in batch]
    if len({len(x) for x in seqs}) != 1 or len({len(s.answer_ids) for s in batch}) != 1:
        raise ValueError("teacher_forced_correct needs samples of equal prompt and answer length")
    n_ans = len(batch[0].answer_ids)
    ids = torch.tensor(seqs, device=device)
    reset_dynamic_rope(model)
    # Logits for the last n_ans + 1 positions; the prediction for answer token j comes from position j - 1.
    logits = model(input_ids=ids, logits_to_keep=n_ans + 1).logits[:, :-1]
    pred = logits.argmax(-1)
    return (pred == ids[:, -n_ans:]).all(-1).tolist()


def batches_by_shape(samples: list[EvalSample], batch_size: int):
    """Group samples of identical shape (so they stack without padding), in a stable order."""
    groups = defaultdict(list)
    for s in samples:
        groups[(len(s.input_ids), len(s.answer_ids))].append(s)
    for key in sorted(groups):
        group = groups[key]
        for i in range(0, len(group), batch_size):
            yield group[i:i + batch_size]


def score_samples(model, samples: list[EvalSample], batch_size: int = 1, desc: str = "scoring") -> list[bool]:
    """Teacher-forced correctness for every sample, in the input order."""
    result: dict[int, bool] = {}
    index = {id(s): i for i, s in enumerate(samples)}
    with tqdm(total=len(samples), desc=desc, unit="sample") as bar:
        for batch in batches_by_shape(samples, batch_size):
            for s, ok in zip(batch, teacher_forced_correct(model, batch)):
                result[index[id(s)]] = bool(ok)
            bar.update(len(batch))
    return [result[i] for i in range(len(samples))]


@torch.no_grad()
def greedy_generate(model, input_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding with a KV cache; returns the new token ids (stops at EOS).

    SDPA tries its flash backend first: on the GPU, cuDNN attention (PyTorch's first choice there) builds a new
    plan for every key length, which made each decoding step host-bound (docs/RESULTS.md, issue 14). Methods
    with their own attention (SelfExtend) do not use SDPA; on the CPU flash is PyTorch's first choice anyway."""
    from longctx.kernels import sdpa_backend

    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    reset_dynamic_rope(model)
    with sdpa_backend("flash"):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=model.config.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


def greedy_answer_correct(model, sample: EvalSample) -> bool:
    """Greedy generation with a KV cache, as a cross-check of the teacher-forced score."""
    return greedy_generate(model, sample.input_ids, len(sample.answer_ids)) == sample.answer_ids


def greedy_agreement(model, samples: list[EvalSample], teacher_forced: list[bool]) -> float:
    """Fraction of ``samples`` where greedy generation and teacher forcing agree on correctness."""
    if not samples:
        return float("nan")
    agree = [greedy_answer_correct(model, s) == tf for s, tf in zip(samples, teacher_forced)]
    return sum(agree) / len(agree)
