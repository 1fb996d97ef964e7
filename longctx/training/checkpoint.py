"""Resumable checkpoints: ``models/checkpoints/step_<k>``, tied to the params that made them, stored without pickle.

A checkpoint folder holds

- ``trainer_state.json``: format, step, data cursor, losses, learning rates, tokens, fingerprint, the
  scheduler's state and the optimizer's param groups (all plain JSON)
- ``trainable.safetensors``: the trainable weights by name (the LoRA adapter and ``modules_to_save``, or all)
- ``optimizer.safetensors``: AdamW's per-parameter tensors, keys ``<parameter name>/<state key>``
- ``rng_<rank>.safetensors``: each process's torch (and CUDA) generator states, Python's and NumPy's
  generator states as JSON in its metadata

Nothing is unpickled on resume: safetensors and JSON carry no code, so a doctored checkpoint can at
worst be unreadable (Accelerate's ``load_state`` unpickled ``custom_checkpoint_0.pkl`` with
``weights_only=False``: whoever could write the checkpoint folder could run code). An unreadable
checkpoint is reported, renamed to ``unreadable_step_<k>`` (kept for inspection, never deleted), and the
previous compatible one is resumed, or training starts from scratch. Weights and optimizer state go through
``torch.distributed.checkpoint.state_dict``, which gives full (unsharded) state dicts under DDP and FSDP alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from longctx.io import atomic_write_json
from longctx.modeling import EXTENSION_FILE
from longctx.params import TrainParams
from longctx.training.trainable import Trainable

FORMAT = "longctx-checkpoint-1"  # trainer_state.json "format"; anything else is not read
STATE_FILE = "trainer_state.json"
MODEL_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
# Keys that do not change what training computes: a checkpoint stays valid when they change.
_FINGERPRINT_IGNORES = ("checkpoint_every", "keep_checkpoints")


class CheckpointError(Exception):
    """A checkpoint that cannot be read (truncated, doctored, older format)."""


def rng_file(rank: int) -> str:
    return f"rng_{rank}.safetensors"


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
        if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit() and (p / STATE_FILE).exists():
            out.append((int(p.name[5:]), p))
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def _state_dict_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, tied weights (one tensor under two names) copied: safetensors stores no aliasing."""
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().contiguous()
        if v.data_ptr() in seen:
            v = v.clone()
        seen.add(v.data_ptr())
        out[k] = v
    return out


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's generator states: torch's (and CUDA's) as tensors, Python's and NumPy's as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": json.dumps([version, list(words), gauss]),
            "numpy": json.dumps([name, keys.tolist(), int(pos), int(has_gauss), float(cached)])}
    return tensors, meta


def save_checkpoint(t: Trainable, ckpt_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write ``step_<k>`` (see the module docstring) under a temporary name, then rename it, so a crash never
    leaves a half checkpoint that looks complete; keep the newest ``keep``. Every process takes part."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    accelerator, model = t.accelerator, t.model
    ckpt_dir = Path(ckpt_dir)
    final, tmp = ckpt_dir / f"step_{step}", ckpt_dir / f".tmp_step_{step}"
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    options = _state_dict_options(cpu_offload=True, ignore_frozen_params=True)
    weights = get_model_state_dict(model, options=options)  # collective under FSDP
    # ignore_frozen_params still lets a frozen weight tied to another one through (lm_head): keep the trainable ones
    trainable = {n.replace("_orig_mod.", "") for n, p in accelerator.unwrap_model(model).named_parameters()
                 if p.requires_grad}
    weights = {k: v for k, v in weights.items() if k in trainable}
    if accelerator.is_main_process and len(weights) != len(trainable):
        raise RuntimeError(f"checkpoint: {len(trainable) - len(weights)} trainable weights not found in the "
                           "state dict (parameter names do not match)")
    optim = get_optimizer_state_dict(model, getattr(t.optimizer, "optimizer", t.optimizer), options=options)
    rng, rng_meta = _rng_state()
    save_file(rng, str(tmp / rng_file(accelerator.process_index)), metadata=rng_meta)
    if accelerator.is_main_process:
        save_file(_unshared(weights), str(tmp / MODEL_FILE))
        save_file(_unshared({f"{name}/{key}": v for name, per in optim["state"].items() for key, v in per.items()}),
                  str(tmp / OPTIMIZER_FILE))
        atomic_write_json(tmp / STATE_FILE, {"format": FORMAT, **state, "scheduler": t.scheduler.state_dict(),
                                             "param_groups": optim["param_groups"]})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in list_checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        print(f"finetune: checkpoint {final}")
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------
# Reading: everything is read and checked first, applied only once all of it was readable.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Checkpoint:
    path: Path
    state: dict  # trainer_state.json
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]  # this process's
    rng_meta: dict[str, str]


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def read_checkpoint(path: Path, rank: int, num_processes: int) -> Checkpoint:
    """The checkpoint in ``path`` as this process needs it; ``CheckpointError`` saying why if any part
    (of any process) cannot be read."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        if state.get("format") != FORMAT:
            raise CheckpointError(f"format {state.get('format')!r}, not {FORMAT!r} (written by an older version?)")
        for key in ("step", "cursor", "losses", "lrs", "tokens", "scheduler", "param_groups"):
            if key not in state:
                raise CheckpointError(f"{STATE_FILE} has no {key!r}")
        model, _ = _read_safetensors(path / MODEL_FILE)
        optimizer, _ = _read_safetensors(path / OPTIMIZER_FILE)
        rng = {}
        for r in range(num_processes):  # every process's, so no process finds a broken one after the choice
            tensors, meta = _read_safetensors(path / rng_file(r))
            if r == rank:
                rng, rng_meta = tensors, meta
        json.loads(rng_meta["python"]), json.loads(rng_meta["numpy"])
    except CheckpointError:
        raise
    except Exception as e:  # truncated or doctored files: safetensors, JSON and OS errors alike
        raise CheckpointError(f"{type(e).__name__}: {e}") from e
    return Checkpoint(path, state, model, optimizer, rng, rng_meta)


def restore(ckpt: Checkpoint, t: Trainable) -> None:
    """Put model weights, optimizer, scheduler and this process's generators back to the checkpoint's step."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    _, unexpected = set_model_state_dict(t.model, ckpt.model, options=_state_dict_options(strict=False))
    if unexpected:
        raise CheckpointError(f"{ckpt.path}/{MODEL_FILE}: weights the model does not have: {sorted(unexpected)[:3]}")
    per_param: dict[str, dict] = {}
    for key, tensor in ckpt.optimizer.items():
        name, field = key.rsplit("/", 1)
        per_param.setdefault(name, {})[field] = tensor
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in ckpt.state["param_groups"]]
    set_optimizer_state_dict(t.model, getattr(t.optimizer, "optimizer", t.optimizer),
                             {"state": per_param, "param_groups": groups}, options=_state_dict_options())
    t.scheduler.load_state_dict(ckpt.state["scheduler"])
    torch.set_rng_state(ckpt.rng["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([ckpt.rng[f"cuda_{i}"] for i in range(torch.cuda.device_count())])
    version, words, gauss = json.loads(ckpt.rng_meta["python"])
    random.setstate((version, tuple(words), gauss))
    name, keys, pos, has_gauss, cached = json.loads(ckpt.rng_meta["numpy"])
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def set_aside(path: Path, reason: str) -> Path:
    """Rename an unreadable checkpoint to ``unreadable_<name>`` (never deleted: the user may want it)."""
    target, i = path.with_name(f"unreadable_{path.name}"), 1
    while target.exists():
        target, i = path.with_name(f"unreadable_{path.name}_{i}"), i + 1
    os.replace(path, target)
    print(f"finetune: checkpoint {path} cannot be read ({reason}); set aside as {target}", flush=True)
    return target


def select_resume(ckpt_dir: Path, fingerprint: str, num_processes: int) -> Checkpoint | None:
    """Main process, once per run: the newest readable checkpoint made with ``fingerprint`` (read for rank 0).

    One scan: checkpoints of other params are stale scratch and are removed, as are half-written
    ``.tmp_step_*`` folders; unreadable ones are set aside; older compatible ones are kept.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    for p in ckpt_dir.glob(".tmp_step_*"):
        shutil.rmtree(p, ignore_errors=True)
    found = None
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            made_with = json.loads((path / STATE_FILE).read_text())["fingerprint"]
        except Exception as e:
            set_aside(path, f"{STATE_FILE}: {type(e).__name__}: {e}")
            continue
        if made_with != fingerprint:
            shutil.rmtree(path, ignore_errors=True)
        elif found is None:
            try:
                found = read_checkpoint(path, 0, num_processes)
            except CheckpointError as e:
                set_aside(path, str(e))
    return found


def resume(t: Trainable, ckpt_dir: Path, fingerprint: str) -> dict | None:
    """Every process: restore the checkpoint the main process chose (``select_resume``); its trainer state,
    or None to start from scratch."""
    from accelerate.utils import broadcast

    acc = t.accelerator
    found = select_resume(ckpt_dir, fingerprint, acc.num_processes) if acc.is_main_process else None
    chosen = torch.tensor([found.state["step"] if found else -1], device=acc.device)
    chosen = int(broadcast(chosen)[0]) if acc.num_processes > 1 else int(chosen[0])
    if chosen < 0:
        return None
    ckpt = found or read_checkpoint(Path(ckpt_dir) / f"step_{chosen}", acc.process_index, acc.num_processes)
    restore(ckpt, t)
    if acc.is_main_process:
        print(f"finetune: resuming from {ckpt.path} (step {chosen} of {ckpt.state['steps']})")
    return ckpt.state


def clear_checkpoints(ckpt_dir: Path) -> None:
    """Remove every ``step_*`` (and half-written) checkpoint: the output is written, they have served.
    Set-aside ``unreadable_*`` folders stay."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.iterdir():
        if p.is_dir() and (p.name.startswith("step_") or p.name.startswith(".tmp_step_")):
            shutil.rmtree(p, ignore_errors=True)
