"""Fine-tuning: components plus one recipe (the torchtune split).

Components, one job each:

- ``batching``: training rows from ``data/sft`` and the tensors of one micro-batch
- ``sampler``: which rows each process reads at each step (a pure function of the step)
- ``trainable``: the model made trainable (kernels, checkpointing, LoRA or full), AdamW, the LR schedule
- ``loss``: the model's own loss, or the fused chunked lm_head + cross-entropy
- ``step``: one optimizer step over ``grad_accum`` micro-batches, with clipping
- ``finite``: stop on a non-finite loss, gradient or weight
- ``checkpoint``: resumable checkpoints without pickle (safetensors + JSON), set aside when unreadable
- ``signals``: Ctrl-C / SIGTERM finish the step, write a checkpoint, stop
- ``curves``: dvclive training curves

``recipe.finetune`` reads top to bottom: set up, resume, step, log, save.
"""

from longctx.training.recipe import finetune

__all__ = ["finetune"]
