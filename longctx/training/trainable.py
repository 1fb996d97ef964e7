"""The trainable model: loaded, with kernels, checkpointing and LoRA as asked; AdamW over what is trainable;
the learning-rate schedule; all prepared by Accelerate."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from longctx.kernels import (
    apply_liger,
    checkpointing_kwargs,
    compile_layers,
    keep_activations,
    offload_checkpoints,
    tile_mlp,
)
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
    autocast_bf16 = accelerator.mixed_precision == "bf16"
    model = load_model(extended_dir, dtype=load_dtype(tp, dtype, autocast_bf16), device=accelerator.device,
                       attn_implementation=tp.attn_implementation)
    model.config.use_cache = False
    model, params, optimizer = trainable_model(model, tp, autocast_bf16)
    scheduler = lr_scheduler(optimizer, tp)
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.distributed_type == DistributedType.FSDP:
        params = [p for p in model.parameters() if p.requires_grad]
    return Trainable(accelerator, model, params, optimizer, scheduler, LossFn(model, fused=tp.fused_ce, liger=tp.liger))


def load_dtype(tp: TrainParams, dtype: str, autocast_bf16: bool) -> str:
    """The dtype to load the model in for training: ``model.dtype`` when set; with ``auto``, float32 master
    weights, except LoRA under bf16 autocast, whose FROZEN weights load in bf16: float32 copies of a 7-8B model's
    frozen weights (4 bytes a parameter) would only be cast back to bf16 by autocast in every matmul."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if autocast_bf16 and tp.mode == "lora" else "float32"


def trainable_model(model, tp: TrainParams, autocast_bf16: bool = False):
    """Liger kernels, compiled layers and checkpointing if asked (the last ``train.keep_activations`` layers
    not checkpointed, the first ``train.offload_checkpoints`` layers' inputs in host memory, the MLPs tiled by
    ``train.mlp_chunk_tokens``), train mode, LoRA if asked, and AdamW over what is trainable:
    (model, params, optimizer).

    ``autocast_bf16``: the forward runs under bf16 autocast (GPU, ``model.dtype: auto``); see :func:`wrap_lora`.
    """
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
    if tp.keep_activations:
        layers = model.config.num_hidden_layers
        if tp.keep_activations > layers:
            raise ValueError(f"train.keep_activations: {tp.keep_activations} exceeds the model's {layers} decoder "
                             f"layers; allowed 0..{layers}")
        keep_activations(model, tp.keep_activations)
    if tp.offload_checkpoints:
        layers = model.config.num_hidden_layers
        if tp.offload_checkpoints + tp.keep_activations > layers:
            raise ValueError(f"train.offload_checkpoints: {tp.offload_checkpoints} offloaded + {tp.keep_activations} "
                             f"plain (keep_activations) exceed the model's {layers} decoder layers; allowed "
                             f"0..{layers - tp.keep_activations}")
        offload_checkpoints(model, tp.offload_checkpoints)
    if tp.mlp_chunk_tokens:  # after Liger (tiles its MLP) and before LoRA (PEFT swaps the Linears inside)
        tile_mlp(model, tp.mlp_chunk_tokens)
    model.train()
    if tp.mode == "lora":
        model = wrap_lora(model, tp, autocast_bf16)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tp.lr, betas=(tp.beta1, tp.beta2), weight_decay=tp.weight_decay)
    return model, params, optimizer


def wrap_lora(model, tp: TrainParams, autocast_bf16: bool = False):
    """PEFT LoRA adapters (float32: PEFT up-casts adapters of a bf16 base). ``autocast_bf16`` (bf16 frozen
    weights, forward under bf16 autocast): every trainable parameter (also ``lora.trainable`` copies of bf16
    modules) is made float32 for AdamW, and PEFT's up-cast of each adapter's INPUT to float32 is switched off:
    autocast runs the adapter matmuls in bf16 anyway, so the cast would only copy every activation."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=tp.lora.r, lora_alpha=tp.lora.alpha, lora_dropout=tp.lora.dropout,
                     target_modules=list(tp.lora.target_modules), modules_to_save=list(tp.lora.trainable) or None,
                     task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    if autocast_bf16:
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        for module in model.modules():
            if hasattr(module, "lora_A"):
                module.cast_input_dtype_enabled = False
    return model


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
