"""Fine-tuning under Accelerate: LoRA (PEFT) or full, on the prepared long-dialog data.

One plain loop (no Trainer): load the extended model, optionally wrap it in LoRA, and step
through ``data/sft/train.jsonl``. Position-id methods (CREAM, PoSE, RandPos) replace each
sample's position ids with their scheme, so the model sees target-length positions while
training at the short window. The output folder holds either a LoRA adapter or full weights,
plus ``finetune.json`` saying which; ``load_finetuned`` turns it back into a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from longctx.io import AtomicDir, atomic_write_json
from longctx.kernels import apply_liger, checkpointing_kwargs, compile_layers, sdpa_backend
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


def batch_inputs(rows: list[dict], ext: Extension, step_seed: int, device, row_seeds: list[int] | None = None) -> dict:
    """Tensors for one micro-batch (right-padded), with the attention the method needs.

    - Packed samples restart their position ids; with no attention mask transformers reads each
      restart as a sample boundary (no cross-sample attention).
    - A position-id method makes jumps inside one sample, which transformers would also read as
      boundaries, so those batches get an explicit mask: all ones for one sample per row, a
      block-diagonal causal 4-D mask for packed rows.

    ``row_seeds`` (one per row) seed the position-id schemes; default ``step_seed * 7 + row``.
    """
    L = max(len(r["input_ids"]) for r in rows)
    pad = lambda x, v: x + [v] * (L - len(x))  # noqa: E731
    ids = torch.tensor([pad(r["input_ids"], 0) for r in rows], device=device)
    labels = torch.tensor([pad(r["labels"], -100) for r in rows], device=device)
    if ext.position_ids:
        seeds = row_seeds if row_seeds is not None else [step_seed * 7 + j for j in range(len(rows))]
        pos = [method_position_ids(ext, r["seq_lens"], seed) for seed, r in zip(seeds, rows)]
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
        model = _wrap_lora(model, tp)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tp.lr, betas=(tp.beta1, tp.beta2), weight_decay=tp.weight_decay)
    return model, params, optimizer


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


# ---------------------------------------------------------------------------------------------
# Data cursor: which training rows each process reads, as a pure function of the global slot.
# ---------------------------------------------------------------------------------------------

def micro_batch_slots(step: int, accum_index: int, process_index: int, micro: int, grad_accum: int,
                      num_processes: int) -> list[int]:
    """Global sample slots of one micro-batch.

    Optimizer step ``step`` consumes the ``micro * grad_accum * num_processes`` consecutive slots
    starting at ``step * that``; within it, micro-batch ``accum_index`` of process ``process_index``
    takes slots ``(accum_index * num_processes + process_index) * micro`` onwards. So the same global
    batch (e.g. 2 = batch_size 2 x 1 process = batch_size 1 x 2 processes = grad_accum 2 x 1 process)
    reads the same rows whatever the split, and the cursor after step k is just ``(k + 1) * that``.
    """
    per_step = micro * grad_accum * num_processes
    start = step * per_step + (accum_index * num_processes + process_index) * micro
    return list(range(start, start + micro))


class SampleOrder:
    """Slot -> row index: a fresh seeded permutation of the rows for every epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._perms = n, seed, {}

    def __call__(self, slot: int) -> int:
        epoch, i = divmod(slot, self.n)
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch][i]


# ---------------------------------------------------------------------------------------------
# Loss: the model's own, or fused (no full logits).
# ---------------------------------------------------------------------------------------------

def _chunk_ce_sum(h, weight, bias, y):
    logits = torch.nn.functional.linear(h, weight, bias).float()
    return torch.nn.functional.cross_entropy(logits, y, reduction="sum")


def _liger_loss():
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="mean")


def fused_causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         bias: torch.Tensor | None = None, chunk_size: int = 1024, liger: bool = False):
    """Causal-LM cross-entropy from the final hidden states without materialising the full logits.

    Same value as transformers' loss (shifted labels, ``-100`` ignored, mean over label tokens):
    only label positions go through the lm_head, ``chunk_size`` rows at a time, each chunk
    recomputed in the backward pass (so at most one chunk of logits is alive). ``liger=True`` (CUDA)
    has Liger's fused linear cross-entropy do the same in one kernel.
    """
    y = labels[:, 1:]
    keep = y != -100
    h = hidden[:, :-1][keep]
    y = y[keep]
    n = y.numel()
    if n == 0:
        return hidden.sum() * 0.0
    if liger:
        if torch.is_autocast_enabled("cuda"):  # a Triton kernel: autocast does not reach it, so cast here
            dt = torch.get_autocast_dtype("cuda")
            h, weight, bias = h.to(dt), weight.to(dt), bias.to(dt) if bias is not None else None
        return _liger_loss()(weight, h, y, bias)
    from torch.utils.checkpoint import checkpoint

    total = None
    for i in range(0, n, chunk_size):
        part = checkpoint(_chunk_ce_sum, h[i:i + chunk_size], weight, bias, y[i:i + chunk_size], use_reentrant=False)
        total = part if total is None else total + part
    return total / n


def _causal_lm(model):
    """The transformers *ForCausalLM inside accelerate/PEFT wrappers."""
    m = getattr(model, "module", model)  # DDP
    return m.get_base_model() if hasattr(m, "get_base_model") else m


class LossFn:
    """``loss_fn(model, batch)``: the model's own loss, or (``fused=True``) ``fused_causal_lm_loss``.

    The fused path still calls the (wrapped) model's forward, so DDP, PEFT and gradient
    checkpointing see an ordinary forward; it asks for the logits of one position only
    (``logits_to_keep=1``) and takes the final hidden states from a hook on the decoder.
    """

    def __init__(self, model, fused: bool = False, chunk_size: int = 1024, liger: bool = False):
        self.fused, self.chunk_size, self.liger, self._hidden = fused, chunk_size, liger, None
        if fused:
            lm = _causal_lm(model)
            if getattr(lm.config, "final_logit_softcapping", None):
                raise ValueError("train.fused_ce: models with logit soft-capping are not supported; "
                                 "set fused_ce: false")
            head = lm.get_output_embeddings()
            if hasattr(head, "lora_A"):
                raise ValueError("train.fused_ce: LoRA on lm_head is not supported; drop lm_head from target_modules")
            self._head = head
            lm.get_decoder().register_forward_hook(self._grab)

    def _grab(self, module, args, output):
        self._hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def __call__(self, model, batch: dict) -> torch.Tensor:
        if not self.fused:
            return model(**batch).loss
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        model(**inputs, logits_to_keep=1)
        hidden, self._hidden = self._hidden, None
        weight, bias = self._head.weight, getattr(self._head, "bias", None)
        return fused_causal_lm_loss(hidden, weight, batch["labels"], bias, self.chunk_size, liger=self.liger)


# ---------------------------------------------------------------------------------------------
# Checkpoints: models/checkpoints/step_<k>, resumable, tied to the params that made them.
# ---------------------------------------------------------------------------------------------

CHECKPOINT_STATE = "trainer_state.json"
# Keys that do not change what training computes: a checkpoint stays valid when they change.
_FINGERPRINT_IGNORES = ("checkpoint_every", "keep_checkpoints")


def _file_digest(path: Path, whole: bool) -> str:
    """sha256 of a file; for large weight files its size plus first and last MiB (cheap, still specific)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if whole or size <= 4 << 20:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return h.hexdigest()


def train_fingerprint(tp: TrainParams, dtype: str, extended_dir: Path, sft_file: Path, num_processes: int) -> str:
    """Hash of everything a checkpoint's meaning depends on: train params, extension, model, data, world size."""
    train = {k: v for k, v in dataclasses.asdict(tp).items() if k not in _FINGERPRINT_IGNORES}
    extended_dir = Path(extended_dir)
    weights = (".safetensors", ".bin")
    model_files = {p.name: _file_digest(p, whole=p.suffix not in weights) for p in sorted(extended_dir.iterdir())
                   if p.is_file() and (p.suffix in weights or p.name in ("config.json", EXTENSION_FILE))}
    blob = json.dumps({"train": train, "dtype": dtype, "model": model_files, "sft": _file_digest(Path(sft_file), True),
                       "num_processes": num_processes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (``step_<k>`` with a state file), oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    out = []
    for p in ckpt_dir.iterdir():
        if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit() and (p / CHECKPOINT_STATE).exists():
            out.append((int(p.name[5:]), p))
    return sorted(out)


def find_resumable(ckpt_dir: Path, fingerprint: str) -> tuple[Path, dict] | None:
    """The newest checkpoint made with the same fingerprint, with its trainer state."""
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        state = json.loads((path / CHECKPOINT_STATE).read_text())
        if state.get("fingerprint") == fingerprint:
            return path, state
    return None


def _clear_checkpoints(ckpt_dir: Path, keep: list[Path] = ()) -> None:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    keep = {Path(k).resolve() for k in keep}
    for p in ckpt_dir.iterdir():
        if p.is_dir() and (p.name.startswith("step_") or p.name.startswith(".tmp_step_")) and p.resolve() not in keep:
            shutil.rmtree(p, ignore_errors=True)


def _register_lora_checkpoint_hooks(accelerator) -> None:
    """LoRA checkpoints hold the adapter (and modules_to_save) only, not the frozen base weights."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for i, m in enumerate(models):
                sd = get_peft_model_state_dict(accelerator.unwrap_model(m))
                sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
                save_file(sd, os.path.join(output_dir, f"adapter_{i}.safetensors"))
        weights.clear()  # nothing for Accelerate to save: the adapter is written above

    def load_hook(models, input_dir):
        for i, m in enumerate(list(models)):
            set_peft_model_state_dict(accelerator.unwrap_model(m),
                                      load_file(os.path.join(input_dir, f"adapter_{i}.safetensors")))
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _save_checkpoint(accelerator, ckpt_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Accelerate ``save_state`` (model or adapter, optimizer, scheduler, RNG of every process) plus
    ``trainer_state.json`` (step, data cursor, losses, fingerprint), built under a temporary name and
    renamed into ``step_<k>`` so a crash never leaves a half checkpoint that looks complete."""
    ckpt_dir = Path(ckpt_dir)
    final, tmp = ckpt_dir / f"step_{step}", ckpt_dir / f".tmp_step_{step}"
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / CHECKPOINT_STATE, state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in list_checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        print(f"finetune: checkpoint {final}")
    accelerator.wait_for_everyone()
    return final


class _SigintFlag:
    """First Ctrl-C: finish the current optimizer step, write a checkpoint, stop. Second: stop at once."""

    def __init__(self):
        self.hit, self._old = False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        print("\nfinetune: interrupt: finishing this step and writing a checkpoint (Ctrl-C again to abort)",
              flush=True)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def finetune(extended_dir: Path, sft_file: Path, out_dir: Path, tp: TrainParams, dtype: str = "auto",
             live_dir: Path | None = None, checkpoint_dir: Path | None = None,
             on_step: Callable[[int, float], None] | None = None) -> dict:
    """Fine-tune the extended model; write ``out_dir`` atomically. Returns summary metrics.

    ``checkpoint_dir`` (default: ``<out_dir>/../checkpoints``) holds resumable checkpoints: every
    ``tp.checkpoint_every`` steps, and on Ctrl-C. A checkpoint with the same fingerprint (train params,
    dtype, extended model, data, number of processes) is resumed on start; the result equals an
    uninterrupted run. Checkpoints are deleted once ``out_dir`` is written. ``on_step(step, loss)``
    is called on every process after each optimizer step (``step`` counts from 1); a
    KeyboardInterrupt raised there is handled like Ctrl-C.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed
    from tqdm.auto import tqdm

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
    scheduler = _scheduler(optimizer, tp)
    # The scheduler stays unprepared: Accelerate's wrapper steps it once per process, we step once per optimizer step.
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.distributed_type == DistributedType.FSDP:
        params = [p for p in model.parameters() if p.requires_grad]
    accelerator.register_for_checkpointing(scheduler)
    if tp.mode == "lora":
        _register_lora_checkpoint_hooks(accelerator)
    loss_fn = LossFn(model, fused=tp.fused_ce, liger=tp.liger)

    rows = read_sft(sft_file, tp.seq_len)
    sample = SampleOrder(len(rows), tp.seed)
    micro, nproc, rank = tp.batch_size, accelerator.num_processes, accelerator.process_index
    per_step = micro * tp.grad_accum * nproc

    # Resume from the newest compatible checkpoint; incompatible ones are stale scratch.
    fingerprint = train_fingerprint(tp, dtype, extended_dir, sft_file, nproc)
    found = find_resumable(ckpt_dir, fingerprint)
    if accelerator.is_main_process:  # checkpoints of other params are stale scratch
        _clear_checkpoints(ckpt_dir, keep=[p for _, p in list_checkpoints(ckpt_dir)
                                           if json.loads((p / CHECKPOINT_STATE).read_text()).get("fingerprint")
                                           == fingerprint])
    accelerator.wait_for_everyone()
    start, losses, lrs, tokens = 0, [], [], 0
    if found is not None:
        path, state = found
        accelerator.load_state(str(path))
        start, losses, lrs, tokens = state["step"], state["losses"], state["lrs"], state["tokens"]
        assert state["cursor"] == start * per_step, "checkpoint data cursor does not match its step"
        if accelerator.is_main_process:
            print(f"finetune: resuming from {path} (step {start} of {tp.steps})")

    live = _open_live(live_dir) if live_dir is not None and accelerator.is_main_process else None
    if live is not None:  # a resumed run re-logs the history it restored, so the curves are whole
        for loss, lr in zip(losses, lrs):
            live.log_metric("loss", round(loss, 6))
            live.log_metric("lr", lr)
            live.next_step()

    def trainer_state(done: int) -> dict:
        return {"step": done, "cursor": done * per_step, "losses": losses, "lrs": lrs, "tokens": tokens,
                "fingerprint": fingerprint, "steps": tp.steps, "num_processes": nproc}

    done, at_boundary, t0 = start, True, time.perf_counter()
    cuda = accelerator.device.type == "cuda"
    with _SigintFlag() as sigint, sdpa_backend(tp.sdpa_backend):
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
                        if accelerator.sync_gradients and tp.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(params, tp.max_grad_norm)
                        optimizer.step()
                        if accelerator.sync_gradients:
                            scheduler.step()
                        optimizer.zero_grad()
                    step_loss += loss.detach().float() / tp.grad_accum
                    step_tokens += int(batch["input_ids"].numel())
                # The reported loss is the mean over processes: the loss of the global batch.
                reduced = torch.stack([step_loss, torch.tensor(float(step_tokens), device=accelerator.device),
                                       torch.tensor(float(sigint.hit), device=accelerator.device)])
                if nproc > 1:
                    reduced = accelerator.reduce(reduced, reduction="sum")
                    reduced[0] /= nproc
                done = step + 1
                losses.append(float(reduced[0]))
                lrs.append(scheduler.get_last_lr()[0])
                tokens += int(reduced[1])
                at_boundary = True  # model, optimizer, scheduler, RNG and bookkeeping all at step `done`
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
                if reduced[2] > 0:  # Ctrl-C on any process: every process stops at this same step
                    raise KeyboardInterrupt
                if tp.checkpoint_every and done % tp.checkpoint_every == 0 and done < tp.steps:
                    _save_checkpoint(accelerator, ckpt_dir, done, trainer_state(done), tp.keep_checkpoints)
        except KeyboardInterrupt:
            # Raised at a step boundary (first Ctrl-C, or from on_step): the state is exactly step `done`.
            if at_boundary and done > start:
                _save_checkpoint(accelerator, ckpt_dir, done, trainer_state(done), tp.keep_checkpoints)
                if accelerator.is_main_process:
                    print(f"finetune: interrupted after step {done}; rerun to resume")
            elif accelerator.is_main_process:
                print(f"finetune: aborted inside step {done + 1}; resume starts from the last checkpoint")
            raise
    seconds = time.perf_counter() - t0

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
        _clear_checkpoints(ckpt_dir)  # the output is written: the scratch checkpoints have served
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
