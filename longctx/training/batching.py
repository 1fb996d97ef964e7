"""Training rows from the prepare stage, and the tensors of one micro-batch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from longctx.methods import Extension
from longctx.position_ids import make_position_ids


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
