"""Fine-tuning under Accelerate: LoRA (PEFT) or full, on the prepared long-dialog data.

One plain loop (no Trainer): load the extended model, optionally wrap it in LoRA, and step
through ``data/sft/train.jsonl``. Position-id methods (CREAM, PoSE, RandPos) replace each
sample's position ids with their scheme, so the model sees target-length positions while
training at the short window. The output folder holds either a LoRA adapter or full weights,
plus ``finetune.json`` saying which; ``load_finetuned`` turns it back into a model.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from longctx.io import AtomicDir, atomic_write_json
from longctx.methods import Extension
from longctx.modeling import EXTENSION_FILE, load_model, read_extension, verify_rope
from longctx.params import TrainParams
from longctx.position_ids import make_position_ids

FINETUNE_FILE = "finetune.json"


def read_sft(path: Path, seq_len: int) -> list[dict]:
    """Training sequences from the prepare stage, cut to ``seq_len`` tokens."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the prepare stage first")
    rows = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            n = min(len(r["input_ids"]), seq_len)
            seq_lens, total = [], 0
            for m in r.get("seq_lens") or [len(r["input_ids"])]:
                if total >= n:
                    break
                seq_lens.append(min(m, n - total))
                total += seq_lens[-1]
            rows.append({
                "input_ids": r["input_ids"][:n],
                "labels": r["labels"][:n],
                "position_ids": (r.get("position_ids") or list(range(n)))[:n],
                "seq_lens": seq_lens,
            })
    if not rows:
        raise ValueError(f"{path}: no training sequences")
    return rows


def method_position_ids(ext: Extension, seq_lens: list[int], seed: int) -> list[int]:
    """Position ids of a (possibly packed) sequence under the extension's position-id scheme.

    Each packed sample gets its own scheme, scaled to ``length * factor`` (its share of the
    target window); samples too short for a scheme keep contiguous positions.
    """
    out = []
    for i, n in enumerate(seq_lens):
        if ext.position_ids and n >= 3:
            kw = {k: v for k, v in ext.position_ids.items() if k != "method"}
            target = max(n, math.floor(n * ext.factor))
            out += make_position_ids(ext.position_ids["method"], n, target, seed * 1000003 + i, **kw).tolist()
        else:
            out += list(range(n))
    return out


def batch_inputs(rows: list[dict], ext: Extension, step_seed: int, device) -> dict:
    """Tensors for one micro-batch (right-padded), with the attention the method needs.

    - Packed samples restart their position ids; with no attention mask transformers reads each
      restart as a sample boundary (no cross-sample attention).
    - A position-id method makes jumps inside one sample, which transformers would also read as
      boundaries, so those batches get an explicit mask: all ones for one sample per row, a
      block-diagonal causal 4-D mask for packed rows.
    """
    L = max(len(r["input_ids"]) for r in rows)
    pad = lambda x, v: x + [v] * (L - len(x))  # noqa: E731
    ids = torch.tensor([pad(r["input_ids"], 0) for r in rows], device=device)
    labels = torch.tensor([pad(r["labels"], -100) for r in rows], device=device)
    if ext.position_ids:
        pos = [method_position_ids(ext, r["seq_lens"], step_seed * 7 + j) for j, r in enumerate(rows)]
    else:
        pos = [r["position_ids"] for r in rows]
    position_ids = torch.tensor([pad(p, p[-1]) for p in pos], device=device)
    # use_cache=False matters: with a cache object transformers skips its packed-sequence detection.
    out = {"input_ids": ids, "labels": labels, "position_ids": position_ids, "use_cache": False}
    packed = any(len(r["seq_lens"]) > 1 for r in rows)
    padded = any(len(r["input_ids"]) < L for r in rows)
    if ext.position_ids or padded:
        if packed:
            from longctx.data.packing import packed_attention_mask

            mask = torch.zeros(len(rows), 1, L, L, dtype=torch.bool, device=device)
            for j, r in enumerate(rows):
                n = len(r["input_ids"])
                mask[j, 0, :n, :n] = torch.as_tensor(packed_attention_mask(r["seq_lens"]), device=device)
            out["attention_mask"] = mask
        else:
            out["attention_mask"] = torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in rows], device=device)
    return out


def _scheduler(optimizer, tp: TrainParams):
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


def _wrap_lora(model, tp: TrainParams):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=tp.lora.r, lora_alpha=tp.lora.alpha, lora_dropout=tp.lora.dropout,
                     target_modules=list(tp.lora.target_modules), modules_to_save=list(tp.lora.trainable) or None,
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def _open_live(live_dir: Path):
    """dvclive logger for the training curves; training goes on without curves if it cannot start."""
    import warnings

    try:
        from dvclive import Live

        # dvcyaml=False: dvclive would otherwise rewrite the project's dvc.yaml.
        return Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    except Exception as e:  # no dvclive installed, or not inside a usable git/DVC repo
        warnings.warn(f"dvclive unavailable ({type(e).__name__}: {e}); training curves are not logged", stacklevel=2)
        return None


def finetune(extended_dir: Path, sft_file: Path, out_dir: Path, tp: TrainParams, dtype: str = "auto",
             live_dir: Path | None = None) -> dict:
    """Fine-tune the extended model; write ``out_dir`` atomically. Returns summary metrics."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    extended_dir, out_dir = Path(extended_dir), Path(out_dir)
    ext = read_extension(extended_dir)
    if ext is None:
        raise FileNotFoundError(f"{extended_dir}/{EXTENSION_FILE}: missing; run the extend stage first")
    if tp.steps == 0:
        with AtomicDir(out_dir) as tmp:
            atomic_write_json(tmp / FINETUNE_FILE, {"mode": "none", "steps": 0, "method": ext.method})
        return {"steps": 0}

    accelerator = Accelerator(gradient_accumulation_steps=tp.grad_accum,
                              mixed_precision="bf16" if torch.cuda.is_available() and dtype == "auto" else "no")
    set_seed(tp.seed)
    # Master weights in float32; on GPU the forward runs in bf16 under autocast.
    model = load_model(extended_dir, dtype="float32" if dtype == "auto" else dtype, device=accelerator.device)
    model.config.use_cache = False
    if tp.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    if tp.mode == "lora":
        model = _wrap_lora(model, tp)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tp.lr, betas=(tp.beta1, tp.beta2), weight_decay=tp.weight_decay)
    scheduler = _scheduler(optimizer, tp)
    # The scheduler stays unprepared: Accelerate's wrapper steps it once per process, we step once per optimizer step.
    model, optimizer = accelerator.prepare(model, optimizer)

    rows = read_sft(sft_file, tp.seq_len)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(tp.seed)).tolist()
    live = _open_live(live_dir) if live_dir is not None and accelerator.is_main_process else None

    micro = tp.batch_size
    per_step = micro * tp.grad_accum * accelerator.num_processes
    cursor = accelerator.process_index * micro
    losses, tokens, t0 = [], 0, time.perf_counter()
    for step in tqdm(range(tp.steps), desc="finetune", unit="step", disable=not accelerator.is_main_process):
        step_loss, step_tokens = 0.0, 0
        for a in range(tp.grad_accum):
            idx = [order[(cursor + k) % len(order)] for k in range(micro)]
            cursor += per_step // tp.grad_accum
            batch = batch_inputs([rows[i] for i in idx], ext, tp.seed * 100003 + step * 31 + a, accelerator.device)
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and tp.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, tp.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            step_loss += loss.detach().float().item() / tp.grad_accum
            step_tokens += int(batch["input_ids"].numel())
        tokens += step_tokens * accelerator.num_processes
        losses.append(step_loss)
        if live is not None:
            live.log_metric("loss", round(step_loss, 6))
            live.log_metric("lr", scheduler.get_last_lr()[0])
            live.next_step()
    seconds = time.perf_counter() - t0

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        with AtomicDir(out_dir) as tmp:
            unwrapped.save_pretrained(tmp, safe_serialization=True)
            if tp.mode == "full":
                (tmp / EXTENSION_FILE).write_text((extended_dir / EXTENSION_FILE).read_text())
            atomic_write_json(tmp / FINETUNE_FILE, {"mode": tp.mode, "steps": tp.steps, "method": ext.method})
    summary = {
        "steps": tp.steps,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "loss_mean_last_half": round(sum(losses[len(losses) // 2:]) / len(losses[len(losses) // 2:]), 4),
    }
    if live is not None:
        live.end()
    print(f"finetune: {tp.steps} steps, {tokens} tokens in {seconds:.1f} s ({tokens / seconds:.0f} tokens/s)")
    return summary


def load_finetuned(finetuned_dir: Path, extended_dir: Path, dtype: str = "auto", device=None):
    """The fine-tuned model ready for evaluation: extended model, plus the merged adapter or full weights."""
    finetuned_dir, extended_dir = Path(finetuned_dir), Path(extended_dir)
    info_file = finetuned_dir / FINETUNE_FILE
    if not info_file.exists():
        raise FileNotFoundError(f"{info_file}: missing; run the finetune stage first")
    info = json.loads(info_file.read_text())
    if info["mode"] == "full":
        return load_model(finetuned_dir, dtype=dtype, device=device)
    model = load_model(extended_dir, dtype=dtype, device=device)
    if info["mode"] == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, finetuned_dir).merge_and_unload().eval()
        verify_rope(model, read_extension(extended_dir))
    return model
