"""The longest sequence one training step (or one evaluation forward) fits on this device.

``find_max_length`` doubles the length until a step runs out of memory, then bisects between the
last length that fitted and the first that did not, down to ``granularity`` tokens. Memory is
freed between tries. The step function is injected, so the search is testable without a GPU;
``build_step`` makes the real one from the project's training setup (``TrainParams``: LoRA or
full, gradient checkpointing, fused CE, Liger, SDPA backend, attention kernel; the same bf16 autocast over float32
master weights as ``longctx.training.finetune``).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path

import torch

from longctx.params import TrainParams


def is_oom(exc: BaseException) -> bool:
    """A device out-of-memory error (CUDA raises ``torch.OutOfMemoryError``; some paths a RuntimeError)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if oom_type and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory() -> None:
    """Drop what a failed try left behind: Python garbage, then the CUDA caching allocator's blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def find_max_length(step: Callable[[int], object], start: int = 1024, max_length: int = 1 << 20,
                    granularity: int = 1024, oom: Callable[[BaseException], bool] = is_oom,
                    cleanup: Callable[[], None] = free_memory, log: Callable[[str], None] | None = print) -> dict:
    """Largest length (a multiple of ``granularity``, at most ``max_length``) for which ``step(length)`` runs.

    Powers of two from ``start`` while they fit, then bisection between the last fit and the first
    out-of-memory. Errors other than out-of-memory propagate. Returns ``{"max_length": n or 0,
    "tries": [{"length", "fits", "seconds"}]}``; 0 means even ``start`` did not fit.
    """
    if start % granularity or start <= 0:
        raise ValueError(f"start ({start}) must be a positive multiple of granularity ({granularity})")
    tries = []

    def fits(n: int) -> bool:
        t0 = time.perf_counter()
        try:
            step(n)
            ok = True
        except BaseException as e:  # noqa: BLE001  (re-raised unless it is an OOM)
            if not oom(e):
                raise
            ok = False
        finally:
            cleanup()
        tries.append({"length": n, "fits": ok, "seconds": round(time.perf_counter() - t0, 3)})
        if log:
            log(f"maxlen: {n:>8} tokens: {'fits' if ok else 'out of memory'}")
        return ok

    good, bad, n = 0, None, start
    while n <= max_length:
        if fits(n):
            good, n = n, n * 2
        else:
            bad = n
            break
    if bad is None:  # everything up to max_length fitted: try max_length itself
        top = max_length // granularity * granularity
        if top > good and fits(top):
            return {"max_length": top, "tries": tries}
        bad = top if top > good else good + granularity
    lo, hi = good // granularity, bad // granularity  # in units of granularity; lo fits (or is 0), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid * granularity):
            lo = mid
        else:
            hi = mid
    return {"max_length": lo * granularity, "tries": tries}


def build_step(model_dir: str | Path, tp: TrainParams, dtype: str = "auto", device=None,
               eval_only: bool = False) -> Callable[[int], float]:
    """``step(length)``: one optimizer step (or, ``eval_only``, one no-grad forward) of ``tp.batch_size``
    random sequences of ``length`` tokens, with the configured setup; returns the loss.

    The model folder may be an extended model (its extension, attention and position-id scheme are
    used) or a plain one. ``step.model`` is the model.
    """
    from longctx.kernels import sdpa_backend
    from longctx.modeling import load_model, pick_device, read_extension
    from longctx.training.batching import batch_inputs
    from longctx.training.loss import LossFn
    from longctx.training.trainable import load_dtype, trainable_model

    device = torch.device(device) if device is not None else pick_device()
    autocast = device.type == "cuda" and dtype == "auto"
    model = load_model(model_dir, dtype=load_dtype(tp, dtype, autocast), device=device,
                       attn_implementation=tp.attn_implementation)
    model.config.use_cache = False
    ext = read_extension(Path(model_dir))
    if ext is None:
        from longctx.methods import build_extension

        ext = build_extension("none", {}, model.config.max_position_embeddings, model.config.max_position_embeddings,
                              10000.0, model.config.hidden_size // model.config.num_attention_heads)
    if eval_only:
        model.eval()
        if tp.liger:
            from longctx.kernels import apply_liger

            apply_liger(model)
        loss_fn = LossFn(model, fused=tp.fused_ce, liger=tp.liger)
        optimizer = None
    else:
        model, _, optimizer = trainable_model(model, tp, autocast)
        loss_fn = LossFn(model, fused=tp.fused_ce, liger=tp.liger)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def step(length: int) -> float:
        rows = []
        for _ in range(tp.batch_size):
            ids = torch.randint(0, vocab, (length,), generator=gen).tolist()
            rows.append({"input_ids": ids, "labels": ids, "position_ids": list(range(length)), "seq_lens": [length]})
        batch = batch_inputs(rows, ext, 0, device)
        with sdpa_backend(tp.sdpa_backend):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                if optimizer is None:
                    with torch.no_grad():
                        loss = loss_fn(model, batch)
                else:
                    loss = loss_fn(model, batch)
            if optimizer is not None:
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step.model = model
    return step
