"""Aggregate per-model metrics into one summary for ``dvc metrics diff``, plus plots.

Summary keys are the eval keys with the model appended (``MetricKey.of(model)``), e.g.
``passkey.16384.extended``, ``passkey.16384.lo.extended``, ``ppl.16384.base``; training metrics
come in as ``train.<key>``. Per retrieval task the summary adds RULER's effective length
(``stats.effective_length``) of each model::

    passkey.in_window.base          the base model's mean score at lengths <= its native window
    passkey.threshold               0.9 x that score
    passkey.effective_length.base   longest length whose score (and every shorter one's) >= threshold
    passkey.effective_length.extended
"""

from __future__ import annotations

from pathlib import Path

from longctx.evaluation.metric_key import MODELS, MetricKey
from longctx.evaluation.stats import effective_length, in_window_score
from longctx.io import atomic_savefig, atomic_write_json, read_json

EFFECTIVE_FRACTION = 0.9  # of the base model's in-window score (RULER's threshold, made relative)
NATIVE_WINDOW_KEY = "info.native_window"  # written by stages/evaluate.py


def summarize(per_model: dict[str, dict], train: dict | None = None) -> dict:
    summary: dict = {}
    for model, metrics in per_model.items():
        for key, value in metrics.items():
            summary[MetricKey.parse(key).of(model).format()] = value
    for key, value in (train or {}).items():
        summary[f"train.{key}"] = value
    summary.update(effective_lengths(per_model))
    return dict(sorted(summary.items()))


def cell_scores(metrics: dict, task: str) -> dict[int, float]:
    """{length: score} of one task's main cells (no depth, detail or statistic)."""
    out = {}
    for key, value in metrics.items():
        k = MetricKey.try_parse(key)
        if k is not None and k.task == task and k.is_cell:
            out[k.length] = value
    return out


def accuracy_tasks(metrics: dict) -> list[str]:
    """Tasks scored by accuracy: those whose cells carry a Wilson interval (``.n``)."""
    keys = (MetricKey.try_parse(k) for k in metrics)
    return sorted({k.task for k in keys if k is not None and k.stat == "n" and k.depth is None})


def effective_lengths(per_model: dict[str, dict], fraction: float = EFFECTIVE_FRACTION) -> dict:
    """Threshold and effective length per accuracy task (module docstring); {} without a native window."""
    base = per_model.get("base") or {}
    window = base.get(NATIVE_WINDOW_KEY)
    if not window:
        return {}
    out = {}
    for task in accuracy_tasks(base):
        reference = in_window_score(cell_scores(base, task), int(window))
        if reference is None:  # no length inside the window was evaluated
            continue
        threshold = round(fraction * reference, 4)
        out[MetricKey(task, detail="in_window", model="base").format()] = round(reference, 4)
        out[MetricKey(task, detail="threshold").format()] = threshold
        for model, metrics in per_model.items():
            scores = cell_scores(metrics, task)
            if scores:
                out[MetricKey(task, detail="effective_length", model=model).format()] = effective_length(scores, threshold)
    return out


def by_length(per_model: dict[str, dict]) -> list[dict]:
    """Rows {length, passkey_base, passkey_extended, ppl_base, ...} for line plots."""
    rows: dict[int, dict] = {}
    for model, metrics in per_model.items():
        for key, value in metrics.items():
            k = MetricKey.try_parse(key)
            if k is not None and k.is_cell:
                rows.setdefault(k.length, {"length": k.length})[f"{k.task}_{model}"] = value
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
        k = MetricKey.try_parse(key)
        if k is not None and k.task == task and k.depth is not None and k.detail is None and k.stat is None:
            out[(k.length, k.depth)] = value
    return out


def plot_heatmaps(per_model: dict[str, dict], out_dir: Path) -> None:
    """Length x depth accuracy heat maps for every task with depths (passkey, needle, ...), per model."""
    from longctx.evaluation.needle import needle_heatmap

    out_dir.mkdir(parents=True, exist_ok=True)
    for model, metrics in per_model.items():
        keys = (MetricKey.try_parse(k) for k in metrics)
        tasks = {k.task for k in keys if k is not None and k.depth is not None}
        for task in sorted(tasks):
            needle_heatmap(depth_results(metrics, task), out_dir / f"{task}_{model}.png", title=f"{task} ({model})")
