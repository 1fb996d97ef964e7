"""dvclive training curves (loss, learning rate, tokens/s, peak memory), one row per optimizer step."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def open_live(live_dir: Path, losses: list[float], lrs: list[float]):
    """dvclive logger for the training curves, with the history of a resumed run re-logged so the curves are
    whole; None (training goes on without curves) if dvclive cannot start."""
    try:
        from dvclive import Live

        # dvcyaml=False: dvclive would otherwise rewrite the project's dvc.yaml.
        live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    except Exception as e:  # no dvclive installed, or not inside a usable git/DVC repo
        warnings.warn(f"dvclive unavailable ({type(e).__name__}: {e}); training curves are not logged", stacklevel=2)
        return None
    for loss, lr in zip(losses, lrs):
        live.log_metric("loss", round(loss, 6))
        live.log_metric("lr", lr)
        live.next_step()
    return live


def write_empty_live(live_dir: Path) -> None:
    """The dvclive outputs dvc.yaml declares for the finetune stage (``metrics.json``, ``plots/metrics``),
    empty: a run without steps (training-free) or without dvclive still leaves every declared output,
    so DVC does not fail the stage with "output does not exist". Curves of an earlier run in the same folder
    are removed: they would be reported as this run's."""
    from longctx.io import atomic_write_json

    plots = Path(live_dir) / "plots" / "metrics"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.tsv"):
        old.unlink()
    atomic_write_json(Path(live_dir) / "metrics.json", {})


def log_step(live, loss: float, lr: float, tokens_per_s: float, device: torch.device) -> None:
    """One row: loss, learning rate, tokens/s and, on CUDA, the step's peak memory."""
    live.log_metric("loss", round(loss, 6))
    live.log_metric("lr", lr)
    live.log_metric("tokens_per_s", round(tokens_per_s, 1))
    if device.type == "cuda":
        live.log_metric("peak_memory_gib", round(torch.cuda.max_memory_allocated(device) / 2**30, 3))
    live.next_step()
