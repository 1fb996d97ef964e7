"""One optimizer step: ``grad_accum`` micro-batches, gradient clipping, optimizer and scheduler."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from longctx.training.finite import global_norm, nonfinite
from longctx.training.trainable import Trainable


def optimizer_step(t: Trainable, micro_batches: Iterable[dict], grad_accum: int, max_grad_norm: float):
    """Forward and backward over this process's micro-batches, then one optimizer step.

    Returns, as device values (no sync): the mean loss, this process's token count, and 1.0 if the gradient
    norm was not finite (checked before clipping; computed for the check when ``max_grad_norm`` is 0).
    """
    acc = t.accelerator
    step_loss, step_tokens, bad_grad = torch.zeros((), device=acc.device), 0, None
    for batch in micro_batches:
        with acc.accumulate(t.model):
            loss = t.loss_fn(t.model, batch)
            acc.backward(loss)
            if acc.sync_gradients:
                if max_grad_norm > 0:
                    grad_norm = acc.clip_grad_norm_(t.params, max_grad_norm)
                else:
                    grad_norm = global_norm([p.grad for p in t.params])
                bad_grad = nonfinite(grad_norm).to(acc.device)
            t.optimizer.step()
            if acc.sync_gradients:
                t.scheduler.step()
            t.optimizer.zero_grad()
        step_loss += loss.detach().float() / grad_accum
        step_tokens += int(batch["input_ids"].numel())
    return step_loss, step_tokens, bad_grad
