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
from longctx.modeling import EXTENSION_FILE, FINETUNE_FILE, read_extension
from longctx.params import TrainParams
from longctx.training.batching import batch_inputs, read_sft
from longctx.training.checkpoint import clear_checkpoints, resume, save_checkpoint, train_fingerprint
from longctx.training.curves import log_step, open_live, write_empty_live
from longctx.training.finite import check_finite, global_norm, nonfinite
from longctx.training.sampler import SampleOrder, micro_batch_slots
from longctx.training.signals import StopSignals, stop_exception
from longctx.training.step import optimizer_step
from longctx.training.trainable import Trainable, build_trainable


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
    from accelerate.utils import set_seed
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
        if live_dir is not None:
            write_empty_live(live_dir)
        return {"steps": 0}
    acc = _accelerator(tp, dtype)
    set_seed(tp.seed)
    t = build_trainable(acc, extended_dir, ext, tp, dtype)
    rows = read_sft(sft_file, tp.seq_len)
    sample = SampleOrder(len(rows), tp.seed)
    per_step = tp.batch_size * tp.grad_accum * acc.num_processes

    # --- resume from the newest readable checkpoint of these params -----------------------------------
    fingerprint = train_fingerprint(tp, dtype, extended_dir, sft_file, acc.num_processes)
    state = resume(t, ckpt_dir, fingerprint) or {"step": 0, "losses": [], "lrs": [], "tokens": 0}
    start, losses, lrs, tokens = state["step"], state["losses"], state["lrs"], state["tokens"]
    assert state.get("cursor", 0) == start * per_step, "checkpoint data cursor does not match its step"
    live = open_live(live_dir, losses, lrs) if live_dir is not None and acc.is_main_process else None

    def checkpoint(done: int) -> Path:
        trainer_state = {"step": done, "cursor": done * per_step, "losses": losses, "lrs": lrs, "tokens": tokens,
                         "fingerprint": fingerprint, "steps": tp.steps, "num_processes": acc.num_processes}
        return save_checkpoint(t, ckpt_dir, done, trainer_state, tp.keep_checkpoints)

    def micro_batches(step: int):
        for a in range(tp.grad_accum):
            slots = micro_batch_slots(step, a, acc.process_index, tp.batch_size, tp.grad_accum, acc.num_processes)
            yield batch_inputs([rows[sample(s)] for s in slots], ext, 0, acc.device,
                               row_seeds=[tp.seed * 100003 + s for s in slots])

    # --- step, log ------------------------------------------------------------------------------------
    done, at_boundary, t0 = start, True, time.perf_counter()
    with StopSignals() as stop, sdpa_backend(tp.sdpa_backend):
        try:
            for step in tqdm(range(start, tp.steps), desc="finetune", unit="step", initial=start, total=tp.steps,
                             disable=not acc.is_main_process):
                at_boundary, step_t0 = False, time.perf_counter()
                if acc.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(acc.device)
                step_loss, step_tokens, bad_grad = optimizer_step(t, micro_batches(step), tp.grad_accum,
                                                                  tp.max_grad_norm)
                # One reduction per step: the loss of the global batch (mean over processes), tokens, a stop
                # signal on any process, and non-finite flags (a sharded weight is checked where it lives).
                reduced = torch.stack([step_loss, torch.tensor(float(step_tokens), device=acc.device),
                                       torch.tensor(float(stop.signum > 0), device=acc.device),
                                       nonfinite(step_loss), bad_grad, nonfinite(global_norm(t.params))])
                if acc.num_processes > 1:
                    reduced = acc.reduce(reduced, reduction="sum")
                    reduced[0] /= acc.num_processes
                done = step + 1
                check_finite(done, {"loss": float(reduced[3]), "gradient": float(reduced[4]),
                                    "weight": float(reduced[5])})
                losses.append(float(reduced[0]))
                lrs.append(t.scheduler.get_last_lr()[0])
                tokens += int(reduced[1])
                at_boundary = True  # model, optimizer, scheduler, RNG and bookkeeping all at step `done`
                if live is not None:  # reduced[] synchronised the device, so the step time is the real one
                    log_step(live, losses[-1], lrs[-1], float(reduced[1]) / (time.perf_counter() - step_t0),
                             acc.device)
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
                if acc.is_main_process:
                    print(f"finetune: interrupted after step {done}; checkpoint {path}; rerun to resume", flush=True)
                raise stop_exception(stop.signum) from None
            if acc.is_main_process:
                print(f"finetune: aborted inside step {done + 1}; resume starts from the last checkpoint")
            raise
    seconds = time.perf_counter() - t0

    # --- save -----------------------------------------------------------------------------------------
    _write_output(t, out_dir, extended_dir, tp, ext.method)
    if acc.is_main_process:
        clear_checkpoints(ckpt_dir)  # the output is written: the scratch checkpoints have served
    acc.wait_for_everyone()
    if live is not None:
        live.end()
    elif live_dir is not None and acc.is_main_process:  # dvclive missing: the declared outputs, empty
        write_empty_live(live_dir)
    if acc.is_main_process and done > start:
        print(f"finetune: {done - start} steps{f' (resumed at {start})' if start else ''}, {tokens} tokens in "
              f"total, {seconds:.1f} s this run")
    half = losses[len(losses) // 2:]
    return {"steps": tp.steps, "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
            "loss_mean_last_half": round(sum(half) / len(half), 4)}


def _accelerator(tp: TrainParams, dtype: str):
    """Accelerate with ``grad_accum``; bf16 autocast on GPU when ``dtype`` is auto. Refuses a multi-process
    launch that came up as one process (CPU without ACCELERATE_USE_CPU)."""
    from accelerate import Accelerator

    acc = Accelerator(gradient_accumulation_steps=tp.grad_accum,
                      mixed_precision="bf16" if torch.cuda.is_available() and dtype == "auto" else "no")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and acc.num_processes == 1:
        raise RuntimeError(f"finetune: launched as {os.environ['WORLD_SIZE']} processes but Accelerate set up only "
                           "one (no GPU?); on CPU set ACCELERATE_USE_CPU=true (configs/accelerate/cpu_2proc.yaml)")
    return acc


def _write_output(t: Trainable, out_dir: Path, extended_dir: Path, tp: TrainParams, method: str) -> None:
    """``out_dir``, atomically, by the main process: the adapter or full weights (plus ``extension.json``) and
    ``finetune.json``. Under FSDP every process takes part in gathering the full state dict."""
    from accelerate.utils import DistributedType

    acc = t.accelerator
    acc.wait_for_everyone()
    unwrapped = acc.unwrap_model(t.model)
    state_dict = acc.get_state_dict(t.model) if acc.distributed_type == DistributedType.FSDP else None
    if acc.is_main_process:
        with AtomicDir(out_dir) as tmp:
            unwrapped.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            if tp.mode == "full":
                (tmp / EXTENSION_FILE).write_text((extended_dir / EXTENSION_FILE).read_text())
            atomic_write_json(tmp / FINETUNE_FILE, {"mode": tp.mode, "steps": tp.steps, "method": method})
