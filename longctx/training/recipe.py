"""The fine-tuning recipe: set up, resume, step, log, save. Components live beside it (see ``__init__``).

One plain loop under Accelerate (no Trainer): load the extended model, optionally wrap it in LoRA, and
step through ``data/sft/train.jsonl``. Position-id methods (CREAM, PoSE, RandPos) replace each sample's
position ids with their scheme, so the model sees target-length positions while training at the short
window. The output folder holds either a LoRA adapter or full weights, plus ``finetune.json`` saying
which; ``longctx.modeling.load_finetuned`` turns it back into a model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from longctx.io import AtomicDir, atomic_write_json
from longctx.kernels import sdpa_backend
from longctx.modeling import EXTENSION_FILE, FINETUNE_FILE, load_model, read_extension
from longctx.params import TrainParams
from longctx.training.batching import batch_inputs, read_sft
from longctx.training.checkpoint import (clear_checkpoints, read_checkpoint, restore, save_checkpoint,
                                         select_resume, train_fingerprint)
from longctx.training.curves import open_live
from longctx.training.finite import check_finite, global_norm, nonfinite
from longctx.training.loss import LossFn
from longctx.training.optim import lr_scheduler, trainable_model
from longctx.training.sampler import SampleOrder, micro_batch_slots
from longctx.training.signals import StopSignals, stop_exception


def finetune(extended_dir: Path, sft_file: Path, out_dir: Path, tp: TrainParams, dtype: str = "auto",
             live_dir: Path | None = None, checkpoint_dir: Path | None = None,
             on_step: Callable[[int, float], None] | None = None) -> dict:
    """Fine-tune the extended model; write ``out_dir`` atomically. Returns summary metrics.

    ``checkpoint_dir`` (default: ``<out_dir>/../checkpoints``) holds resumable checkpoints: every
    ``tp.checkpoint_every`` steps, and on Ctrl-C or SIGTERM (the step is finished first; then
    KeyboardInterrupt, or ``SystemExit(143)`` for SIGTERM). A readable checkpoint with the same fingerprint
    (train params, dtype, extended model, data, number of processes) is resumed on start; the result equals
    an uninterrupted run. Checkpoints are deleted once ``out_dir`` is written. A non-finite loss, gradient
    or weight raises ``NonFiniteError`` and writes nothing. ``on_step(step, loss)`` is called on every
    process after each optimizer step (``step`` counts from 1); a KeyboardInterrupt raised there is handled
    like Ctrl-C.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, broadcast, set_seed
    from tqdm.auto import tqdm

    # --- set up -----------------------------------------------------------------------------------
    extended_dir, out_dir = Path(extended_dir), Path(out_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir.parent / "checkpoints"
    ext = read_extension(extended_dir)
    if ext is None:
        raise FileNotFoundError(f"{extended_dir}/{EXTENSION_FILE}: missing; run the extend stage first")
    if tp.steps == 0:
        with AtomicDir(out_dir) as tmp:
            atomic_write_json(tmp / FINETUNE_FILE, {"mode": "none", "steps": 0, "method": ext.method})
        return {"steps": 0}

    accelerator = Accelerator(gradient_accumulation_steps=tp.grad_accum,
                              mixed_precision="bf16" if torch.cuda.is_available() and dtype == "auto" else "no")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and accelerator.num_processes == 1:
        raise RuntimeError(f"finetune: launched as {os.environ['WORLD_SIZE']} processes but Accelerate set up only "
                           "one (no GPU?); on CPU set ACCELERATE_USE_CPU=true (configs/accelerate/cpu_2proc.yaml)")
    set_seed(tp.seed)
    if ext.attention and tp.attn_implementation != "sdpa":
        print(f"finetune: {ext.method} runs its own attention; train.attn_implementation={tp.attn_implementation} "
              "is not used")
    # Master weights in float32; on GPU the forward runs in bf16 under autocast.
    model = load_model(extended_dir, dtype="float32" if dtype == "auto" else dtype, device=accelerator.device,
                       attn_implementation=tp.attn_implementation)
    model.config.use_cache = False
    model, params, optimizer = trainable_model(model, tp)
    scheduler = lr_scheduler(optimizer, tp)
    # The scheduler stays unprepared: Accelerate's wrapper steps it once per process, we step once per optimizer step.
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.distributed_type == DistributedType.FSDP:
        params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = LossFn(model, fused=tp.fused_ce, liger=tp.liger)

    rows = read_sft(sft_file, tp.seq_len)
    sample = SampleOrder(len(rows), tp.seed)
    micro, nproc, rank = tp.batch_size, accelerator.num_processes, accelerator.process_index
    per_step = micro * tp.grad_accum * nproc

    # --- resume from the newest readable checkpoint of these params -----------------------------------
    fingerprint = train_fingerprint(tp, dtype, extended_dir, sft_file, nproc)
    found = select_resume(ckpt_dir, fingerprint, nproc) if accelerator.is_main_process else None
    chosen = torch.tensor([found.state["step"] if found else -1], device=accelerator.device)
    chosen = int(broadcast(chosen)[0]) if nproc > 1 else int(chosen[0])  # the main process's choice, everywhere
    start, losses, lrs, tokens = 0, [], [], 0
    if chosen >= 0:
        ckpt = found if found is not None else read_checkpoint(ckpt_dir / f"step_{chosen}", rank, nproc)
        restore(ckpt, model, optimizer, scheduler)
        state = ckpt.state
        start, losses, lrs, tokens = state["step"], state["losses"], state["lrs"], state["tokens"]
        assert state["cursor"] == start * per_step, "checkpoint data cursor does not match its step"
        if accelerator.is_main_process:
            print(f"finetune: resuming from {ckpt.path} (step {start} of {tp.steps})")

    live = open_live(live_dir) if live_dir is not None and accelerator.is_main_process else None
    if live is not None:  # a resumed run re-logs the history it restored, so the curves are whole
        for loss, lr in zip(losses, lrs):
            live.log_metric("loss", round(loss, 6))
            live.log_metric("lr", lr)
            live.next_step()

    def checkpoint(done: int):
        state = {"step": done, "cursor": done * per_step, "losses": losses, "lrs": lrs, "tokens": tokens,
                 "fingerprint": fingerprint, "steps": tp.steps, "num_processes": nproc}
        return save_checkpoint(accelerator, ckpt_dir, done, state, model, optimizer, scheduler, tp.keep_checkpoints)

    # --- step ---------------------------------------------------------------------------------------
    done, at_boundary, t0 = start, True, time.perf_counter()
    cuda = accelerator.device.type == "cuda"
    with StopSignals() as stop, sdpa_backend(tp.sdpa_backend):
        try:
            for step in tqdm(range(start, tp.steps), desc="finetune", unit="step", initial=start, total=tp.steps,
                             disable=not accelerator.is_main_process):
                at_boundary = False
                step_loss, step_tokens, step_t0 = torch.zeros((), device=accelerator.device), 0, time.perf_counter()
                if cuda:
                    torch.cuda.reset_peak_memory_stats(accelerator.device)
                for a in range(tp.grad_accum):
                    slots = micro_batch_slots(step, a, rank, micro, tp.grad_accum, nproc)
                    batch = batch_inputs([rows[sample(s)] for s in slots], ext, 0, accelerator.device,
                                         row_seeds=[tp.seed * 100003 + s for s in slots])
                    with accelerator.accumulate(model):
                        loss = loss_fn(model, batch)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            if tp.max_grad_norm > 0:
                                grad_norm = accelerator.clip_grad_norm_(params, tp.max_grad_norm)
                            else:
                                grad_norm = global_norm([p.grad for p in params])
                            bad_grad = nonfinite(grad_norm).to(accelerator.device)
                        optimizer.step()
                        if accelerator.sync_gradients:
                            scheduler.step()
                        optimizer.zero_grad()
                    step_loss += loss.detach().float() / tp.grad_accum
                    step_tokens += int(batch["input_ids"].numel())
                # One reduction per step: the loss of the global batch (mean over processes), tokens, a stop
                # signal on any process, and non-finite flags (a sharded weight is checked where it lives).
                reduced = torch.stack([step_loss, torch.tensor(float(step_tokens), device=accelerator.device),
                                       torch.tensor(float(stop.signum > 0), device=accelerator.device),
                                       nonfinite(step_loss), bad_grad, nonfinite(global_norm(params))])
                if nproc > 1:
                    reduced = accelerator.reduce(reduced, reduction="sum")
                    reduced[0] /= nproc
                done = step + 1
                check_finite(done, {"loss": float(reduced[3]), "gradient": float(reduced[4]),
                                    "weight": float(reduced[5])})
                losses.append(float(reduced[0]))
                lrs.append(scheduler.get_last_lr()[0])
                tokens += int(reduced[1])
                at_boundary = True  # model, optimizer, scheduler, RNG and bookkeeping all at step `done`

                # --- log ---------------------------------------------------------------------------
                if live is not None:
                    live.log_metric("loss", round(losses[-1], 6))
                    live.log_metric("lr", lrs[-1])
                    # reduced[] synchronised the device, so the step time is the real one
                    live.log_metric("tokens_per_s", round(float(reduced[1]) / (time.perf_counter() - step_t0), 1))
                    if cuda:
                        live.log_metric("peak_memory_gib",
                                        round(torch.cuda.max_memory_allocated(accelerator.device) / 2**30, 3))
                    live.next_step()
                if on_step is not None:
                    on_step(done, losses[-1])
                if reduced[2] > 0:  # Ctrl-C / SIGTERM on any process: every process stops at this same step
                    raise KeyboardInterrupt
                if tp.checkpoint_every and done % tp.checkpoint_every == 0 and done < tp.steps:
                    checkpoint(done)
        except KeyboardInterrupt:
            # Raised at a step boundary (first signal, or from on_step): the state is exactly step `done`.
            if at_boundary and done > start:
                path = checkpoint(done)
                if accelerator.is_main_process:
                    print(f"finetune: interrupted after step {done}; checkpoint {path}; rerun to resume", flush=True)
                raise stop_exception(stop.signum) from None
            if accelerator.is_main_process:
                print(f"finetune: aborted inside step {done + 1}; resume starts from the last checkpoint")
            raise
    seconds = time.perf_counter() - t0

    # --- save ---------------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    # Under FSDP every process takes part in gathering the full state dict.
    state_dict = accelerator.get_state_dict(model) if accelerator.distributed_type == DistributedType.FSDP else None
    if accelerator.is_main_process:
        with AtomicDir(out_dir) as tmp:
            unwrapped.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            if tp.mode == "full":
                (tmp / EXTENSION_FILE).write_text((extended_dir / EXTENSION_FILE).read_text())
            atomic_write_json(tmp / FINETUNE_FILE, {"mode": tp.mode, "steps": tp.steps, "method": ext.method})
        clear_checkpoints(ckpt_dir)  # the output is written: the scratch checkpoints have served
    accelerator.wait_for_everyone()
    summary = {
        "steps": tp.steps,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "loss_mean_last_half": round(sum(losses[len(losses) // 2:]) / len(losses[len(losses) // 2:]), 4),
    }
    if live is not None:
        live.end()
    ran = done - start
    if accelerator.is_main_process and ran:
        print(f"finetune: {ran} steps{f' (resumed at {start})' if start else ''}, {tokens} tokens in total, "
              f"{seconds:.1f} s this run")
    return summary
