"""Cross-experiment report: one Markdown table and two plots comparing methods.

Everything is read through one command, ``dvc exp show --json``: it covers experiments (derived
from HEAD by default), explicit commits/branches/tags (``--rev REV``, repeatable), every branch tip
(``--all-branches``) and every commit (``--all-commits``), and returns params and metrics for each
row without checking anything out. The DVC 3.x JSON is a list of baseline revisions::

    [{"rev": "<sha>|workspace", "name": "<branch>"|null,
      "data": {"params": {"params.yaml": {"data": {...}}},
               "metrics": {"metrics/summary.json": {"data": {"passkey.8192.extended": 1.0, ...}}}},
      "error": null|{...},
      "experiments": null|[{"name": "<exp>", "revs": [{"rev", "name", "data", ...}]}]}]

Layers, each small: :func:`dvc_exp_show` (subprocess), :func:`collect_rows` (pure, parsed JSON to
rows), :func:`render_markdown` (pure), :func:`plot_by_method` (matplotlib), :func:`write_report`
(glue; files written atomically). Only the main summary keys ``<task>.<length>.<model>`` are
tabulated; depth (``.d0.5``) and position-bucket (``.bucket3``) detail keys are ignored.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

from longctx.io import atomic_savefig, atomic_write_text

METRICS_FILE = "metrics/summary.json"
PARAMS_FILE = "params.yaml"
PARAM_COLUMNS = ("method", "target_length", "train.steps", "train.mode")
TASKS = {"passkey": max, "ppl": min}  # task -> which value is best
TASK_LABELS = {"passkey": "passkey accuracy", "ppl": "perplexity"}
MAIN_KEY = re.compile(r"(passkey|ppl)\.(\d+)\.(base|extended)")
PLOT_FILES = {task: f"{task}_by_method.png" for task in TASKS}


# --------------------------------------------------------------------------- reading (subprocess)


def dvc_exp_show(
    repo: str | Path = ".",
    revs: tuple[str, ...] | list[str] = (),
    all_commits: bool = False,
    all_branches: bool = False,
    all_tags: bool = False,
) -> list:
    """Run ``dvc exp show --json`` in ``repo`` and return the parsed JSON."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    for rev in revs:
        cmd += ["--rev", rev]
    cmd += ["--all-commits"] * all_commits + ["--all-branches"] * all_branches + ["--all-tags"] * all_tags
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed in {repo}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------- rows (pure)


def _lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _file_data(data: dict, section: str, path: str) -> dict | None:
    entry = ((data or {}).get(section) or {}).get(path) or {}
    return entry.get("data")


def main_metrics(summary: dict) -> dict[tuple[str, int, str], float]:
    """{(task, length, model): value} from flat summary keys; detail keys are dropped."""
    out = {}
    for key, value in summary.items():
        m = MAIN_KEY.fullmatch(key)
        if m and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[(m.group(1), int(m.group(2)), m.group(3))] = float(value)
    return out


def _row(entry: dict, kind: str, baseline: str | None, state: str | None, metrics_file: str, param_keys) -> dict:
    rev = entry.get("rev") or ""
    data = entry.get("data") or {}
    params = _file_data(data, "params", PARAMS_FILE) or {}
    summary = _file_data(data, "metrics", metrics_file)
    if kind == "workspace":
        name = "workspace"
    else:
        name = entry.get("name") or rev[:7]
    return {
        "name": name,
        "rev": "" if kind == "workspace" else rev[:7],
        "kind": kind,
        "baseline": baseline,
        "state": state,  # experiments only: DVC executor state (queued, running, failed, ...) or None
        "params": {k: _lookup(params, k) for k in param_keys},
        "metrics": main_metrics(summary or {}),
        "error": bool(entry.get("error")) or summary is None,
    }


def iter_entries(show: list):
    """Yield (entry, kind, baseline name, executor state) for every baseline revision and experiment."""
    for base in show:
        is_ws = base.get("rev") == "workspace"
        base_name = "workspace" if is_ws else (base.get("name") or (base.get("rev") or "")[:7])
        yield base, "workspace" if is_ws else "commit", None, None
        for exp in base.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            for rev in exp.get("revs") or []:
                yield rev, "experiment", base_name, state


def collect_rows(
    show: list,
    metrics_file: str = METRICS_FILE,
    param_keys: tuple[str, ...] = PARAM_COLUMNS,
    include_workspace: bool | None = None,
) -> list[dict]:
    """One row per revision in ``dvc exp show --json`` output, in DVC's order.

    Each row: name, rev (short), kind (workspace/commit/experiment), baseline and executor state
    (for experiments), params {key: value}, metrics {(task, length, model): value}, error (no summary / failed).
    The same commit listed twice (e.g. as two branch names) is kept once. The workspace is kept when
    ``include_workspace`` is True, dropped when False, and by default kept only when its params and
    metrics differ from every other row (after ``dvc exp run`` it merely repeats the last experiment).
    """
    rows, seen = [], set()
    for entry, kind, baseline, state in iter_entries(show):
        row = _row(entry, kind, baseline, state, metrics_file, param_keys)
        key = (kind, entry.get("rev"))
        if kind != "workspace" and key in seen:
            continue
        seen.add(key)
        rows.append(row)
    others = [r for r in rows if r["kind"] != "workspace"]

    def keep(row):
        if row["kind"] != "workspace" or include_workspace is True:
            return True
        if include_workspace is False:
            return False
        return not row["error"] and all(
            (r["params"], r["metrics"]) != (row["params"], row["metrics"]) for r in others
        )

    return [r for r in rows if keep(r)]


def columns(rows: list[dict], model: str = "extended") -> list[tuple[str, int]]:
    """(task, length) columns present in any row, tasks in TASKS order, lengths ascending."""
    present = {(t, n) for r in rows for (t, n, m) in r["metrics"] if m == model}
    return [(t, n) for t in TASKS for n in sorted({n for (tt, n) in present if tt == t})]


def best_values(rows: list[dict], cols, model: str = "extended") -> dict[tuple[str, int], float]:
    """Best value per (task, length) over rows: max passkey accuracy, min perplexity."""
    best = {}
    for task, length in cols:
        values = [r["metrics"][(task, length, model)] for r in rows if (task, length, model) in r["metrics"]]
        values = [v for v in values if not math.isnan(v)]
        if values:
            best[(task, length)] = TASKS[task](values)
    return best


def base_reference(rows: list[dict], cols) -> dict[tuple[str, int], list[float]]:
    """Distinct base-model values per column (one value when the base was evaluated once)."""
    ref: dict[tuple[str, int], list[float]] = {}
    for task, length in cols:
        values = sorted({r["metrics"][(task, length, "base")] for r in rows if (task, length, "base") in r["metrics"]})
        if values:
            ref[(task, length)] = values
    return ref


# --------------------------------------------------------------------------- markdown (pure)


def fmt_value(task: str, value: float | None) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "nan"
    if task == "passkey":
        return f"{value:.0%}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def fmt_param(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _is_best(value: float, best: float | None) -> bool:
    return best is not None and not math.isnan(value) and math.isclose(value, best, rel_tol=1e-9, abs_tol=1e-12)


def render_markdown(rows: list[dict], plots: dict[str, str] | None = None, source: str = "dvc exp show --json") -> str:
    """The report: intro, table (experiments × task × length), base reference row, plots, notes."""
    ranked = [r for r in rows if r["metrics"]]
    missing = [r for r in rows if not r["metrics"]]
    cols = columns(ranked)
    best = best_values(ranked, cols)
    ref = base_reference(ranked, cols)
    param_keys = list(ranked[0]["params"]) if ranked else list(PARAM_COLUMNS)

    lines = [
        "# Context-extension methods compared",
        "",
        f"Read from `{source}`: {len(ranked)} revisions with metrics. Cells are the extended model's "
        "passkey accuracy and perplexity per evaluated length (main summary keys `<task>.<length>.extended`; "
        "depth and position-bucket details omitted). **Bold** = best per column (highest passkey "
        "accuracy, lowest perplexity). The *base model* row is the unextended model, for reference (not ranked).",
        "",
    ]
    if not ranked:
        lines += ["No revision has metrics yet.", ""]
    else:
        header = ["experiment", "rev", *param_keys, *(f"{t} {n}" for t, n in cols)]
        align = ["---", "---", *(["---"] * len(param_keys)), *(["---:"] * len(cols))]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        for r in ranked:
            cells = [_cell(r["name"]), r["rev"], *(_cell(fmt_param(r["params"].get(k))) for k in param_keys)]
            for task, length in cols:
                v = r["metrics"].get((task, length, "extended"))
                text = fmt_value(task, v)
                cells.append(f"**{text}**" if v is not None and _is_best(v, best.get((task, length))) else text)
            lines.append("| " + " | ".join(cells) + " |")
        base_cells = ["*base model*", "", *([""] * len(param_keys))]
        for task, length in cols:
            values = ref.get((task, length))
            base_cells.append("–".join(fmt_value(task, v) for v in (values[0], values[-1])) if values and len(values) > 1
                              else fmt_value(task, values[0] if values else None))
        lines += ["| " + " | ".join(base_cells) + " |", ""]
    for task, path in (plots or {}).items():
        lines += [f"![{TASK_LABELS[task]} by method]({path})", ""]
    if missing:
        names = ", ".join(f"`{r['name']}`" + (f" ({r['state']})" if r["state"] else "") for r in missing)
        lines += [f"Without `{METRICS_FILE}` main keys (queued, failed or pre-pipeline revisions): {names}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def plot_by_method(rows: list[dict], task: str, path: str | Path) -> bool:
    """One line per row (extended model) vs length on a log2 axis; base model dashed grey. False if no data."""
    series = []
    for r in rows:
        pts = sorted((n, v) for (t, n, m), v in r["metrics"].items() if t == task and m == "extended")
        if pts:
            series.append((f"{r['name']} ({fmt_param(r['params'].get('method'))})", pts))
    if not series:
        return False
    bases = {tuple(sorted((n, v) for (t, n, m), v in r["metrics"].items() if t == task and m == "base")) for r in rows}
    bases.discard(())

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, pts in enumerate(sorted(bases)):
        ax.plot(*zip(*pts), "--", color="grey", zorder=3, label="base model" if i == 0 else None)
    for i, (label, pts) in enumerate(series):  # markers cycle too, so >10 lines stay distinguishable
        ax.plot(*zip(*pts), "-", marker="osD^v<>ph*"[i % 10], label=label)
    lengths = sorted({n for _, pts in series for n, _ in pts})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    if task == "ppl":
        ax.set_yscale("log")  # plain numbers (40, not 4×10¹) on major and minor ticks
        ax.yaxis.set_major_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(TASK_LABELS[task])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    atomic_savefig(fig, path)
    return True


# --------------------------------------------------------------------------- glue


def write_report(
    out: str | Path = "docs/report",
    repo: str | Path = ".",
    revs: tuple[str, ...] | list[str] = (),
    all_commits: bool = False,
    all_branches: bool = False,
    all_tags: bool = False,
    include_workspace: bool | None = None,
    metrics_file: str = METRICS_FILE,
    show: list | None = None,
    source: str | None = None,
) -> Path:
    """Write ``<out>/report.md`` and ``<out>/{passkey,ppl}_by_method.png``; return the report path.

    ``show`` (already parsed ``dvc exp show --json``, or rows in its shape) skips the subprocess;
    ``source`` then names where they came from in the report's header. A relative ``out`` is
    relative to the current directory, not to ``repo``.
    """
    if show is None:
        show = dvc_exp_show(repo, revs, all_commits, all_branches, all_tags)
    rows = collect_rows(show, metrics_file=metrics_file, include_workspace=include_workspace)
    out = Path(out)
    ranked = [r for r in rows if r["metrics"]]
    plots = {task: name for task, name in PLOT_FILES.items() if plot_by_method(ranked, task, out / name)}
    flags = [f"--rev {r}" for r in revs] + ["--all-commits"] * all_commits + ["--all-branches"] * all_branches
    flags += ["--all-tags"] * all_tags
    source = source or " ".join(["dvc exp show --json", *flags])
    report = out / "report.md"
    atomic_write_text(report, render_markdown(rows, plots, source=source))
    return report
