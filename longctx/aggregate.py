"""Aggregate per-model metrics into one summary for ``dvc metrics diff``, plus plots.

Summary keys read as ``<task>.<length>[.<detail>].<model>``, e.g. ``passkey.16384.extended``,
``ppl.16384.base``; training metrics come in as ``train.<key>``.
"""

from __future__ import annotations

import re
from pathlib import Path

from longctx.io import atomic_savefig, atomic_write_json, read_json

MODELS = ("base", "extended")


def summarize(per_model: dict[str, dict], train: dict | None = None) -> dict:
    summary: dict = {}
    for model, metrics in per_model.items():
        for key, value in metrics.items():
            summary[f"{key}.{model}"] = value
    for key, value in (train or {}).items():
        summary[f"train.{key}"] = value
    return dict(sorted(summary.items()))


def by_length(per_model: dict[str, dict]) -> list[dict]:
    """Rows {length, passkey_base, passkey_extended, ppl_base, ...} for line plots."""
    rows: dict[int, dict] = {}
    for model, metrics in per_model.items():
        for key, value in metrics.items():
            m = re.fullmatch(r"(\w+)\.(\d+)", key)
            if m:
                rows.setdefault(int(m.group(2)), {"length": int(m.group(2))})[f"{m.group(1)}_{model}"] = value
    return [rows[k] for k in sorted(rows)]


def plot_by_length(rows: list[dict], task: str, ylabel: str, path: Path, log: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for model, style in zip(MODELS, ("o--", "s-")):
        pts = [(r["length"], r[f"{task}_{model}"]) for r in rows if f"{task}_{model}" in r]
        if pts:
            ax.plot(*zip(*pts), style, label=model)
    ax.set_xscale("log", base=2)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path)


def aggregate(metrics_dir: Path, plots_dir: Path) -> dict:
    metrics_dir, plots_dir = Path(metrics_dir), Path(plots_dir)
    per_model = {m: read_json(metrics_dir / f"eval_{m}.json") for m in MODELS}
    train_file = metrics_dir / "train.json"
    summary = summarize(per_model, read_json(train_file) if train_file.exists() else None)
    atomic_write_json(metrics_dir / "summary.json", summary)
    rows = by_length(per_model)
    atomic_write_json(metrics_dir / "by_length.json", rows)
    if any("passkey_base" in r for r in rows):
        plot_by_length(rows, "passkey", "passkey accuracy", plots_dir / "passkey_vs_length.png")
    if any("ppl_base" in r for r in rows):
        plot_by_length(rows, "ppl", "perplexity", plots_dir / "ppl_vs_length.png", log=True)
    plot_heatmaps(per_model, plots_dir / "heatmaps")
    return summary


def depth_results(metrics: dict, task: str) -> dict[tuple[int, float], float]:
    """{(length, depth): accuracy} from keys ``<task>.<length>.d<depth>``."""
    out = {}
    for key, value in metrics.items():
        m = re.fullmatch(rf"{re.escape(task)}\.(\d+)\.d([\d.]+)", key)
        if m:
            out[(int(m.group(1)), float(m.group(2)))] = value
    return out


def plot_heatmaps(per_model: dict[str, dict], out_dir: Path) -> None:
    """Length x depth accuracy heat maps for every task with depths (passkey, needle, ...), per model."""
    from longctx.evaluation.needle import needle_heatmap

    out_dir.mkdir(parents=True, exist_ok=True)
    for model, metrics in per_model.items():
        tasks = {k.split(".")[0] for k in metrics if re.fullmatch(r"\w+\.\d+\.d[\d.]+", k)}
        for task in sorted(tasks):
            needle_heatmap(depth_results(metrics, task), out_dir / f"{task}_{model}.png", title=f"{task} ({model})")
