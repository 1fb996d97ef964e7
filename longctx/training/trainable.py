"""The trainable model: loaded, with kernels, checkpointing and LoRA as asked; AdamW over what is trainable;
the learning-rate schedule; all prepared by Accelerate."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from longctx.kernels import apply_liger, checkpointing_kwargs, compile_layers
from longctx.methods import Extension
from longctx.modeling import load_model
from longctx.params import TrainParams
from longctx.training.loss import LossFn


@dataclasses.dataclass
class Trainable:
    """What one optimizer step touches (the model and optimizer as Accelerate prepared them)."""

    accelerator: object
    model: torch.nn.Module
    params: list[torch.nn.Parameter]  # the trainable ones
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_fn: LossFn


def build_trainable(accelerator, extended_dir: Path, ext: Extension, tp: TrainParams, dtype: str) -> Trainable:
    """Load the extended model (float32 master weights; on GPU the forward runs in bf16 under autocast), make it
    trainable, and prepare it with its optimizer. The scheduler stays unprepared: Accelerate's wrapper steps it
    once per process, the recipe steps it once per optimizer step."""
    from accelerate.utils import DistributedType

    if ext.attention and tp.attn_implementation != "sdpa":
        print(f"finetune: {ext.method} runs its own attention; train.attn_implementation={tp.attn_implementation} "
              "is not used")
    model = load_model(extended_dir, dtype="float32" if dtype == "auto" else dtype, device=accelerator.device,
                       attn_implementation=tp.attn_implementation)
    model.config.use_cache = False
    model, params, optimizer = trainable_model(model, tp)
    scheduler = lr_scheduler(optimizer, tp)
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.distributed_type == DistributedType.FSDP:
        params = [p for p in model.parameters() if p.requires_grad]
    return Trainable(accelerator, model, params, optimizer, scheduler, LossFn(model, fused=tp.fused_ce, liger=tp.liger))


def trainable_model(model, tp: TrainParams):
    """Liger kernels, compiled layers and checkpointing if asked, train mode, LoRA if asked, and AdamW
    over what is trainable: (model, params, optimizer)."""
    if tp.liger:
        apply_liger(model)
    if tp.compile:
        compile_layers(model)
    ckpt = checkpointing_kwargs(tp.gradient_checkpointing)
    if ckpt is not None:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt)
    model.train()
    if tp.mode == "lora":
        model = wrap_lora(model, tp)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tp.lr, betas=(tp.beta1, tp.beta2), weight_decay=tp.weight_decay)
    return model, params, optimizer


def wrap_lora(model, tp: TrainParams):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=tp.lora.r, lora_alpha=tp.lora.alpha, lora_dropout=tp.lora.dropout,
                     target_modules=list(tp.lora.target_modules), modules_to_save=list(tp.lora.trainable) or None,
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def lr_scheduler(optimizer, tp: TrainParams) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps``, then cosine / linear decay to 0 at ``steps``, or constant."""
    def factor(step):
        if step < tp.warmup_steps:
            return (step + 1) / (tp.warmup_steps + 1)
        progress = (step - tp.warmup_steps) / max(1, tp.steps - tp.warmup_steps)
        if tp.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if tp.scheduler == "linear":
            return 1 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
