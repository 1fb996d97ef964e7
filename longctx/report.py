"""Cross-experiment report: per-task tables with 95% intervals, effective length, data efficiency, plots.

Everything is read through one command, ``dvc exp show --json``: it covers experiments (derived
from HEAD by default), explicit commits/branches/tags (``--rev REV``, repeatable), every branch tip
(``--all-branches``) and every commit (``--all-commits``), and returns params and metrics for each
row without checking anything out. The DVC 3.x JSON is a list of baseline revisions::

    [{"rev": "<sha>|workspace", "name": "<branch>"|null,
      "data": {"params": {"params.yaml": {"data": {...}}},
               "metrics": {"metrics/summary.json": {"data": {"passkey.8192.extended": 1.0, ...}}}},
      "error": null|{...},
      "experiments": null|[{"name": "<exp>", "revs": [{"rev", "name", "data", ...}]}]}]

A set of experiment folders (``params.yaml`` + ``metrics/summary.json`` each) can stand in for it
(:func:`summaries_as_show`). Summary keys are read with ``MetricKey.parse``, so every task the
evaluation wrote is reported: one table per task (accuracy cells with their Wilson interval
``.lo``/``.hi``, the effective length from ``aggregate.py``), accuracy by needle depth, perplexity by
position, and the data-efficiency view: effective length and perplexity at 2 × target (or the longest
length every run shares) against the fine-tuning budget read from each row's params
(``train.steps × train.batch_size × train.grad_accum``).

Layers, each small: :func:`dvc_exp_show` (subprocess), :func:`collect_rows` (pure, parsed JSON to
rows), :func:`render_markdown` (pure), ``plot_*`` (matplotlib), :func:`write_report` (glue; files
written atomically).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from longctx.evaluation.metric_key import MetricKey
from longctx.evaluation.stats import wilson_interval
from longctx.io import atomic_savefig, atomic_write_text

METRICS_FILE = "metrics/summary.json"
PARAMS_FILE = "params.yaml"
PARAM_COLUMNS = ("method", "recipe", "target_length", "train.steps", "train.mode")  # as the run used them
LOWER_IS_BETTER = ("ppl",)  # every other task is an accuracy (higher is better)
TASK_LABELS = {"passkey": "passkey accuracy", "ppl": "perplexity"}
EFFICIENCY_PLOT = "data_efficiency.png"
POSITION_PLOT = "ppl_by_position.png"


def task_label(task: str) -> str:
    return TASK_LABELS.get(task, f"{task} accuracy")


def plot_file(task: str) -> str:
    return f"{task.replace('.', '_')}_by_method.png"


def with_recipe(params: dict) -> dict:
    """The params a run really used: ``recipe: <name>`` merged over data/train (``params.apply_recipe``).

    Revisions from before recipes existed, or with a recipe that does not resolve, are read as they are.
    """
    from longctx.params import apply_recipe

    try:
        return apply_recipe(params)
    except ValueError:
        return params


def training_budget(params: dict) -> int | None:
    """Fine-tuning sequences seen: train.steps x train.batch_size x train.grad_accum (missing -> 1),
    read from ``params`` as the run used them (:func:`with_recipe`).

    None when the row's params have no ``train.steps`` (e.g. a pre-pipeline commit).
    """
    params = with_recipe(params)
    steps = _lookup(params, "train.steps")
    if steps is None:
        return None
    return int(steps) * int(_lookup(params, "train.batch_size") or 1) * int(_lookup(params, "train.grad_accum") or 1)


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


def main_metrics(summary: dict) -> dict[MetricKey, float]:
    """{MetricKey: value} for every numeric summary key of a model (``.base`` / ``.extended``) or with a
    detail (``passkey.threshold``); training keys (``train.*``) stay out."""
    out = {}
    for key, value in summary.items():
        k = MetricKey.try_parse(key)
        if (k is not None and (k.model is not None or k.detail is not None)
                and isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[k] = float(value)
    return out


def _row(entry: dict, kind: str, baseline: str | None, state: str | None, metrics_file: str, param_keys) -> dict:
    rev = entry.get("rev") or ""
    data = entry.get("data") or {}
    params = _file_data(data, "params", PARAMS_FILE) or {}
    used = with_recipe(params)
    summary = _file_data(data, "metrics", metrics_file)
    if kind == "workspace":
        name = "workspace"
    else:
        name = entry.get("name") or rev[:7]
    metrics = main_metrics(summary or {})
    return {
        "name": name,
        "rev": "" if kind == "workspace" or entry.get("folder") else rev[:7],
        "kind": kind,
        "baseline": baseline,
        "state": state,  # experiments only: DVC executor state (queued, running, failed, ...) or None
        "params": {k: _lookup(used, k) for k in param_keys},
        "method_params": dict((used.get("methods") or {}).get(used.get("method")) or {}),
        "budget": training_budget(params),
        "target_length": _lookup(params, "target_length"),
        "metrics": metrics,
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


def get(row: dict, task: str, length: int | None = None, model: str = "extended", **kw) -> float | None:
    """One metric of a row, e.g. ``get(row, "passkey", 16384, stat="lo")``; None when absent."""
    return row["metrics"].get(MetricKey(task, length, model=model, **kw))


def tasks_of(rows: list[dict]) -> list[str]:
    """Every task with per-length cells: passkey first, other accuracy tasks by name, perplexity last."""
    tasks = {k.task for r in rows for k in r["metrics"] if k.is_cell}
    return sorted(tasks, key=lambda t: (t in LOWER_IS_BETTER, t != "passkey", t))


def columns(rows: list[dict], model: str = "extended") -> list[tuple[str, int]]:
    """(task, length) columns present in any row, tasks in ``tasks_of`` order, lengths ascending."""
    present = {(k.task, k.length) for r in rows for k in r["metrics"] if k.is_cell and k.model == model}
    return [(t, n) for t in tasks_of(rows) for n in sorted({n for (tt, n) in present if tt == t})]


def best_values(rows: list[dict], cols, model: str = "extended") -> dict[tuple[str, int], float]:
    """Best value per (task, length) over rows: max accuracy, min perplexity."""
    best = {}
    for task, length in cols:
        values = [get(r, task, length, model) for r in rows]
        values = [v for v in values if v is not None and not math.isnan(v)]
        if values:
            best[(task, length)] = (min if task in LOWER_IS_BETTER else max)(values)
    return best


def base_reference(rows: list[dict], cols) -> dict[tuple[str, int], list[float]]:
    """Distinct base-model values per column (one value when the base was evaluated once)."""
    ref: dict[tuple[str, int], list[float]] = {}
    for task, length in cols:
        values = sorted({v for r in rows if (v := get(r, task, length, "base")) is not None})
        if values:
            ref[(task, length)] = values
    return ref


def native_window(rows: list[dict]) -> int | None:
    """The base model's native window as the evaluate stage recorded it (``info.native_window``)."""
    for r in rows:
        for model in ("base", "extended"):
            v = get(r, "info.native_window", model=model)
            if v:
                return int(v)
    return None


def separation(rows: list[dict], task: str, length: int) -> tuple[dict, list[tuple[dict, bool]]] | None:
    """The best row of an accuracy column and, per other method, its best row and whether the two
    95% intervals are disjoint (best's lower bound above the other's upper bound); None without intervals."""
    per_method: dict[str, dict] = {}
    for r in rows:
        v = get(r, task, length)
        if v is None or get(r, task, length, stat="lo") is None:
            continue
        method = fmt_param(r["params"].get("method"))
        if method not in per_method or v > get(per_method[method], task, length):
            per_method[method] = r
    if len(per_method) < 2:
        return None
    ranked = sorted(per_method.values(), key=lambda r: -get(r, task, length))
    best = ranked[0]
    lo = get(best, task, length, stat="lo")
    return best, [(r, lo > get(r, task, length, stat="hi")) for r in ranked[1:]]


def pooled_accuracy(row: dict, task: str, lengths, depths) -> tuple[float, float | None, float | None, int] | None:
    """(accuracy, lo, hi, n) of a row's depth cells pooled over ``lengths`` x ``depths``, weighted by samples.

    lo and hi are None when a pooled cell has no sample count (``.n``); None when no cell exists.
    """
    k_sum = n_sum = 0.0
    counted = True
    for n in lengths:
        for d in depths:
            acc = get(row, task, n, depth=d)
            if acc is not None:
                count = get(row, task, n, depth=d, stat="n")
                counted &= count is not None
                k_sum, n_sum = k_sum + acc * (count or 1), n_sum + (count or 1)
    if not n_sum:
        return None
    lo, hi = wilson_interval(round(k_sum), round(n_sum)) if counted else (None, None)
    return k_sum / n_sum, lo, hi, int(n_sum)


def depth_lengths(rows: list[dict], task: str, window: int | None) -> tuple[list[float], list[int], str]:
    """(depths, lengths to pool: those past the native window when any were evaluated there, description)."""
    keys = [k for r in rows for k in r["metrics"] if k.task == task and k.depth is not None and k.stat is None
            and k.model == "extended"]
    lengths = sorted({k.length for k in keys})
    beyond = [n for n in lengths if window and n > window]
    pooled = beyond or lengths
    where = f"lengths {', '.join(map(str, pooled))}" + (f" (past the native window {window})" if beyond else "")
    return sorted({k.depth for k in keys}), pooled, where


def depth_table(rows: list[dict], task: str, window: int | None) -> tuple[list[float], dict, str]:
    """Accuracy per depth pooled over lengths (past the native window when any were evaluated there).

    Returns (depths, {(row name, depth): (accuracy, lo, hi, n)}, which lengths were pooled).
    """
    depths, lengths, where = depth_lengths(rows, task, window)
    out = {(r["name"], d): cell for r in rows for d in depths
           if (cell := pooled_accuracy(r, task, lengths, [d])) is not None}
    return depths, out, where


# --------------------------------------------------------------------------- markdown (pure)


def fmt_value(task: str, value: float | None) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "nan"
    if task not in LOWER_IS_BETTER:
        return f"{value:.0%}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def fmt_interval(lo: float | None, hi: float | None) -> str:
    return "" if lo is None or hi is None else f" [{lo * 100:.0f}–{hi * 100:.0f}]"


def fmt_param(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def fmt_length(reached: float | None, longest: int | None) -> str:
    """Effective length; "≥ L" when it is the longest length evaluated (a lower bound)."""
    if reached is None:
        return "—"
    reached = int(reached)
    return f"≥ {reached}" if longest and reached >= longest else str(reached)


def fmt_run(row: dict, task: str, length: int) -> str:
    """`name` (method) accuracy [interval] of one cell, for the separation notes."""
    value = fmt_value(task, get(row, task, length))
    interval = fmt_interval(get(row, task, length, stat="lo"), get(row, task, length, stat="hi"))
    return f"`{row['name']}` ({fmt_param(row['params'].get('method'))}) {value}{interval}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _is_best(value: float, best: float | None) -> bool:
    return best is not None and not math.isnan(value) and math.isclose(value, best, rel_tol=1e-9, abs_tol=1e-12)


def _table(header: list[str], body: list[list[str]], numeric_from: int) -> list[str]:
    align = ["---"] * numeric_from + ["---:"] * (len(header) - numeric_from)
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|", *("| " + " | ".join(c) + " |" for c in body), ""]


def task_section(rows: list[dict], task: str, cols, best, ref, param_keys) -> list[str]:
    """One table: experiments x lengths of ``task`` (with 95% intervals), effective length, base row."""
    lengths = [n for t, n in cols if t == task]
    accuracy = task not in LOWER_IS_BETTER
    has_eff = accuracy and any(get(r, task, model=m, detail="effective_length") is not None
                               for r in rows for m in ("base", "extended"))
    has_budget = any(r["budget"] is not None for r in rows)
    header = (["experiment", "rev", *param_keys] + ["budget"] * has_budget + [*map(str, lengths)]
              + ["effective length"] * has_eff)
    body = []
    for r in rows:
        cells = [_cell(r["name"]), r["rev"], *(_cell(fmt_param(r["params"].get(k))) for k in param_keys)]
        cells += [fmt_param(r["budget"])] * has_budget
        for n in lengths:
            v = get(r, task, n)
            text = fmt_value(task, v)
            text = f"**{text}**" if v is not None and _is_best(v, best.get((task, n))) else text
            cells.append(text + (fmt_interval(get(r, task, n, stat="lo"), get(r, task, n, stat="hi")) if accuracy else ""))
        if has_eff:
            cells.append(fmt_length(get(r, task, model="extended", detail="effective_length"), lengths[-1]))
        body.append(cells)
    base = ["*base model*", "", *([""] * (len(param_keys) + has_budget))]
    for n in lengths:
        values = ref.get((task, n))
        base.append("–".join(fmt_value(task, v) for v in (values[0], values[-1])) if values and len(values) > 1
                    else fmt_value(task, values[0] if values else None))
    if has_eff:
        base.append(fmt_length(next((v for r in rows if (v := get(r, task, model="base", detail="effective_length"))
                                     is not None), None), lengths[-1]))
    body.append(base)
    lines = [f"## {task_label(task)}", ""]
    if accuracy:
        ns = sorted({int(v) for r in rows for n in lengths if (v := get(r, task, n, stat="n")) is not None})
        lines += [("Samples per cell: " + ("–".join(map(str, (ns[0], ns[-1]))) if len(ns) > 1 else f"{ns[0]}")
                   + "; brackets: 95% Wilson interval (%)." if ns else "No sample counts recorded (no intervals)."), ""]
        threshold = next((v for r in rows if (v := r["metrics"].get(MetricKey(task, detail="threshold"))) is not None), None)
        in_window = next((v for r in rows if (v := get(r, task, model="base", detail="in_window")) is not None), None)
        if has_eff and threshold is not None:
            lines += [f"Effective length: the longest length whose score, and every shorter length's, is ≥ "
                      f"{threshold:.0%} = 0.9 × the base model's mean score at lengths ≤ its native window "
                      f"({in_window:.0%}); \"≥\" = passed at every evaluated length.", ""]
    if has_budget:
        lines += ["Budget = fine-tuning sequences the run saw: `train.steps × train.batch_size × train.grad_accum` "
                  "with its recipe applied (0 = training-free).", ""]
    lines += _table(header, body, 2 + len(param_keys))
    if accuracy:
        notes = []
        for n in lengths:
            sep = separation(rows, task, n)
            if sep:
                best, others = sep
                apart = [fmt_run(r, task, n) for r, disjoint in others if disjoint]
                close = [fmt_run(r, task, n) for r, disjoint in others if not disjoint]
                notes.append(f"- {n}: best {fmt_run(best, task, n)}; **separated from** {', '.join(apart) or 'none'}; "
                             f"overlaps {', '.join(close) or 'none'}")
        if notes:
            lines += ["Best method per length against each other method's best row (95% intervals disjoint or not):",
                      "", *notes, ""]
    return lines


def depth_section(rows: list[dict], task: str, window: int | None) -> list[str]:
    depths, cells, where = depth_table(rows, task, window)
    if len(depths) < 2 and not cells:
        return []
    header = ["experiment", *(f"depth {d:g}" for d in depths)]
    body = [[_cell(r["name"]), *(f"{c[0]:.0%}{fmt_interval(c[1], c[2])}" if (c := cells.get((r["name"], d))) else "—"
                                 for d in depths)] for r in rows]
    return [f"### {task} by needle depth", "", f"Accuracy pooled over {where}; brackets: 95% Wilson interval (%).", "",
            *_table(header, body, 1)]


def position_section(rows: list[dict]) -> list[str]:
    """Perplexity per position bucket at the longest length with buckets, every experiment and the base."""
    keys = {k for r in rows for k in r["metrics"] if k.task == "ppl" and k.detail and k.detail.startswith("bucket")}
    if not keys:
        return []
    length = max(k.length for k in keys)
    buckets = sorted({k.detail for k in keys if k.length == length}, key=lambda b: int(b[6:]))
    nb = len(buckets)
    header = ["experiment", *(f"{i * 100 // nb}–{(i + 1) * 100 // nb}%" for i in range(nb))]
    body = [[_cell(r["name"]), *(fmt_value("ppl", get(r, "ppl", length, detail=b)) for b in buckets)] for r in rows]
    base = next((r for r in rows if get(r, "ppl", length, "base", detail=buckets[0]) is not None), None)
    if base:
        body.append(["*base model*", *(fmt_value("ppl", get(base, "ppl", length, "base", detail=b)) for b in buckets)])
    return [f"## Perplexity by position ({length} tokens)", "",
            "Perplexity of each equal span of the window (by token position): a method that still uses far "
            "tokens keeps the later spans low.", "", *_table(header, body, 1)]


def lengthless_section(rows: list[dict]) -> list[str]:
    """Scores without a length (LongBench tasks 0-100, greedy/teacher-forcing agreement), extended model."""
    tasks = sorted({k.task for r in rows for k in r["metrics"] if k.length is None and k.model == "extended"
                    and k.detail is None and k.stat is None and not k.task.startswith("info.")})
    if not tasks:
        return []
    body = [[_cell(r["name"]), *(fmt_param(None if (v := get(r, t)) is None else round(v, 2)) for t in tasks)] for r in rows]
    base = next((r for r in rows if any(get(r, t, model="base") is not None for t in tasks)), None)
    if base:
        body.append(["*base model*", *(fmt_param(None if (v := get(base, t, model="base")) is None else round(v, 2))
                                       for t in tasks)])
    return ["## Scores without a length", "",
            "LongBench tasks (its official metric, 0–100, at `eval.longbench.max_length`); `check.greedy_agreement` = "
            "fraction of checked answers where greedy decoding agrees with teacher-forced scoring.", "",
            *_table(["experiment", *tasks], body, 1)]


CLAIM_BUDGET = 100  # "fine-tuning on about 100 samples" (Entropy-ABF, arXiv 2401.07004)
FLAT_PPL = 1.2  # "flat perplexity": perplexity at 4 x window within 1.2 x its value at the window
MIDDLE = (0.25, 0.75)  # CREAM's "middle" of the context (arXiv 2406.07138): depths in this range
# 9 markers against matplotlib's 10 default colours: a (colour, marker) pair repeats only after 90 lines
MARKERS = "osD^v<>ph"
REACH = 0.9  # issue 13: every method should reach this passkey accuracy at 2 x the native window


def near_budget(rows: list[dict], method: str, budget: int = CLAIM_BUDGET) -> dict | None:
    """The method's fine-tuned run whose budget is closest to ``budget`` (log scale); None without one."""
    runs = [r for r in rows if r["params"].get("method") == method and r["budget"]]
    return min(runs, key=lambda r: abs(math.log(r["budget"] / budget)), default=None)


def claim_entropy_abf(rows: list[dict]) -> str:
    picks = {m: near_budget(rows, m) for m in ("entropy_abf", "abf", "pi")}
    eff = {m: None if r is None else get(r, "passkey", detail="effective_length") for m, r in picks.items()}
    head = f"Entropy-ABF ≥ ABF > PI in passkey effective length after ~{CLAIM_BUDGET} fine-tuning sequences"
    if any(v is None for v in eff.values()):
        return f"- {head}: not measured (needs fine-tuned entropy_abf, abf and pi runs with an effective length)."
    ok = eff["entropy_abf"] >= eff["abf"] > eff["pi"]
    nums = "; ".join(f"{m} {int(eff[m])} (`{r['name']}`, budget {r['budget']})" for m, r in picks.items())
    return f"- {head}: **{'reproduces' if ok else 'does not reproduce'}**: {nums}."


def claim_selfextend(rows: list[dict], window: int | None) -> str:
    head = "SelfExtend ≥ 90% passkey at 4 × the native window with flat perplexity"
    length = 4 * window if window else None
    runs = [r for r in rows if r["params"].get("method") == "selfextend" and get(r, "passkey", length) is not None]
    if not runs:
        return f"- {head}: not measured (needs a selfextend run evaluated at {length or '4 × window'})."
    r = max(runs, key=lambda r: get(r, "passkey", length))
    acc, ppl_long, ppl_window = get(r, "passkey", length), get(r, "ppl", length), get(r, "ppl", window)
    flat = ppl_long is not None and ppl_window is not None and ppl_long <= FLAT_PPL * ppl_window
    ok = acc >= 0.9 and flat
    ppl = (f"perplexity {fmt_value('ppl', ppl_long)} at {length} vs {fmt_value('ppl', ppl_window)} at {window}"
           f" ({'flat' if flat else 'not flat'}: limit {FLAT_PPL} ×)")
    return f"- {head}: **{'reproduces' if ok else 'does not reproduce'}**: {fmt_run(r, 'passkey', length)}; {ppl}."


def claim_cream(rows: list[dict], window: int | None) -> str:
    head = f"CREAM better than PoSE at middle depths ({MIDDLE[0]:g}–{MIDDLE[1]:g})"
    depths, lengths, where = depth_lengths(rows, "passkey", window)
    middle = [d for d in depths if MIDDLE[0] <= d <= MIDDLE[1]]
    best = {}
    for method in ("cream", "pose"):
        cells = [(c, r) for r in rows if r["params"].get("method") == method
                 and (c := pooled_accuracy(r, "passkey", lengths, middle)) is not None]
        best[method] = max(cells, key=lambda cr: cr[0][0], default=None)
    if not middle or None in best.values():
        return f"- {head}: not measured (needs cream and pose runs with passkey depths in that range)."
    (c, cr), (p, pr) = best["cream"], best["pose"]
    if c[0] > p[0] and c[1] is not None and p[2] is not None and c[1] > p[2]:
        verdict = "reproduces (95% intervals disjoint)"
    elif c[0] > p[0]:
        verdict = "CREAM higher, not separated (intervals overlap)"
    else:
        verdict = "does not reproduce"
    run = lambda acc, r: f"`{r['name']}` {acc[0]:.0%}{fmt_interval(acc[1], acc[2])} (n = {acc[3]})"  # noqa: E731
    return f"- {head}, pooled over {where}: **{verdict}**: cream {run(c, cr)} vs pose {run(p, pr)}."


def reach_section(rows: list[dict], window: int | None, notes: str | None = None) -> list[str]:
    """Issue 13: does each method reach >= 90% passkey at 2 x the native window? Its best run, and the notes
    (``--notes``: measurements that explain the misses) below the table."""
    length = 2 * window if window else None
    best: dict[str, dict] = {}
    for r in rows:
        acc = get(r, "passkey", length) if length else None
        method = r["params"].get("method")
        if acc is not None and method and (method not in best or acc > get(best[method], "passkey", length)):
            best[method] = r
    if not best:
        return []
    body = [[fmt_param(m), f"`{r['name']}`", str(r["budget"]), fmt_value("passkey", get(r, "passkey", length))
             + fmt_interval(get(r, "passkey", length, stat="lo"), get(r, "passkey", length, stat="hi")),
             "yes" if get(r, "passkey", length) >= REACH else "**no**"]
            for m, r in sorted(best.items(), key=lambda mr: -get(mr[1], "passkey", length))]
    lines = [f"## Reaching 2 × the native window ({length} tokens)", "",
             f"Each method's best run: passkey at {length} tokens, goal ≥ {REACH:.0%}.", "",
             *_table(["method", "best run", "budget", f"passkey {length}", f"≥ {REACH:.0%}"], body, 2)]
    if notes:
        lines += [notes.strip(), ""]
    return lines


def claims_section(rows: list[dict], window: int | None) -> list[str]:
    """The seed claims of issue 13, each stated with its numbers and a verdict (or why it is not measured)."""
    return ["## The papers' claims on this model", "",
            claim_entropy_abf(rows), claim_selfextend(rows, window), claim_cream(rows, window), ""]


def efficiency_task(rows: list[dict]) -> str | None:
    """The task the data-efficiency outcome uses: passkey when it has an effective length, else the first that has."""
    tasks = [t for t in tasks_of(rows) if any(get(r, t, detail="effective_length") is not None for r in rows)]
    return "passkey" if "passkey" in tasks else (tasks[0] if tasks else None)


def efficiency_ppl_length(rows: list[dict]) -> int | None:
    """The length whose perplexity the data-efficiency view reads: 2 x target_length when the rows share one
    target and were all evaluated there, else the longest length they all share (e.g. the target itself)."""
    targets = {int(r["target_length"]) for r in rows if r["target_length"]}
    shared = None
    for r in rows:
        if r["budget"] is None or not r["target_length"]:
            continue
        lengths = {k.length for k in r["metrics"] if k.task == "ppl" and k.is_cell and k.model == "extended"}
        shared = lengths if shared is None else shared & lengths
    if not shared:
        return None
    if len(targets) == 1 and 2 * next(iter(targets)) in shared:
        return 2 * next(iter(targets))
    return max(shared)


def method_variant(row: dict, rows: list[dict]) -> str:
    """The row's method, with those of its ``methods.<method>`` parameters that differ between the method's runs
    in ``rows``, e.g. ``yarn (attention_factor=1)``; a key a run's params lack (an export older than the key)
    shows as ``unset``. One line per variant in the data-efficiency view, so two settings never share a line."""
    method = row["params"].get("method")
    same = [r for r in rows if r["params"].get("method") == method]
    keys = sorted({k for r in same for k in r.get("method_params", {})})
    varying = [k for k in keys if len({repr(r.get("method_params", {}).get(k, "unset")) for r in same}) > 1]
    if not varying:
        return fmt_param(method)
    values = ", ".join(f"{k}={fmt_param(row.get('method_params', {}).get(k, 'unset'))}" for k in varying)
    return f"{fmt_param(method)} ({values})"


def efficiency_points(rows: list[dict]) -> dict[str, list[tuple[int, float | None, float | None]]]:
    """{method variant: [(budget, effective length, perplexity at ``efficiency_ppl_length``), ...] sorted by
    budget}; a method run with different parameters of its own is one line per setting (:func:`method_variant`)."""
    task = efficiency_task(rows)
    ppl_length = efficiency_ppl_length(rows)
    out: dict[str, list] = {}
    for r in rows:
        if r["budget"] is None:
            continue
        eff = get(r, task, detail="effective_length") if task else None
        ppl = get(r, "ppl", ppl_length) if ppl_length else None
        if eff is None and ppl is None:
            continue
        out.setdefault(method_variant(r, rows), []).append((r["budget"], eff, ppl))
    return {m: sorted(pts, key=lambda p: p[0]) for m, pts in sorted(out.items())}


def efficiency_ppl_label(rows: list[dict]) -> str:
    """How the data-efficiency view names its perplexity length, e.g. "2 × target (65536)"."""
    length = efficiency_ppl_length(rows)
    targets = {int(r["target_length"]) for r in rows if r["target_length"]}
    if length is None:
        return "2 × target"
    if targets == {length // 2} and length % 2 == 0:
        return f"2 × target ({length})"
    return f"{length} tokens"


def efficiency_section(rows: list[dict], plot: str | None) -> list[str]:
    points = efficiency_points(rows)
    if not points:
        return []
    task = efficiency_task(rows)
    where = efficiency_ppl_label(rows)
    body = [[m, str(b), fmt_param(None if e is None else int(e)), fmt_value("ppl", p)]
            for m, pts in points.items() for b, e, p in pts]
    lines = ["## How little data: effective length and perplexity by fine-tuning budget", "",
             "Budget = fine-tuning sequences seen = `train.steps × train.batch_size × train.grad_accum` "
             f"(0 = training-free). Effective length of `{task}`; perplexity at {where} (2 × target_length when "
             "evaluated there, else the longest length every run shares).", "",
             *_table(["method", "budget (sequences)", f"{task} effective length", f"ppl at {where}"], body, 1)]
    if plot:
        lines += [f"![data efficiency]({plot})", ""]
    return lines


def render_markdown(rows: list[dict], plots: dict[str, str] | None = None, source: str = "dvc exp show --json",
                    notes: str | None = None) -> str:
    """The report: one table per task (95% intervals, effective length), depth, position, data efficiency, plots."""
    plots = plots or {}
    ranked = [r for r in rows if r["metrics"]]
    missing = [r for r in rows if not r["metrics"]]
    cols = columns(ranked)
    best = best_values(ranked, cols)
    ref = base_reference(ranked, cols)
    param_keys = [k for k in (ranked[0]["params"] if ranked else PARAM_COLUMNS)
                  if k != "recipe" or any(r["params"].get("recipe") not in (None, "none") for r in ranked)]
    window = native_window(ranked)

    lines = [
        "# Context-extension methods compared",
        "",
        f"Read from `{source}`: {len(ranked)} revisions with metrics. One table per task: the extended "
        "model's score per evaluated length (summary keys `<task>.<length>.extended`). **Bold** = best per "
        "column (highest accuracy, lowest perplexity). The *base model* row is the unextended model, for "
        "reference (not ranked)." + (f" Native window: {window} tokens." if window else ""),
        "",
    ]
    if not ranked:
        lines += ["No revision has metrics yet.", ""]
    for task in tasks_of(ranked):
        lines += task_section(ranked, task, cols, best, ref, param_keys)
        if task in plots:
            lines += [f"![{task_label(task)} by method]({plots[task]})", ""]
        if task not in LOWER_IS_BETTER:
            lines += depth_section(ranked, task, window)
    lines += lengthless_section(ranked)
    lines += position_section(ranked)
    if POSITION_PLOT in plots.values():
        lines += [f"![perplexity by position]({POSITION_PLOT})", ""]
    lines += efficiency_section(ranked, plots.get("efficiency"))
    if ranked:
        lines += reach_section(ranked, window, notes)
        lines += claims_section(ranked, window)
    if missing:
        names = ", ".join(f"`{r['name']}`" + (f" ({r['state']})" if r["state"] else "") for r in missing)
        lines += [f"Without `{METRICS_FILE}` metrics (queued, failed or pre-pipeline revisions): {names}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(r: dict) -> str:
    return f"{r['name']} ({fmt_param(r['params'].get('method'))})"


def _log2_lengths(ax, lengths) -> None:
    import matplotlib.ticker

    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _log_ppl(ax) -> None:
    import matplotlib.ticker

    ax.set_yscale("log")  # plain numbers (40, not 4×10¹) on major and minor ticks
    ax.yaxis.set_major_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _legend_columns(entries: int) -> int:
    return max(1, math.ceil(entries / 14))


def _legend(ax, entries: int) -> None:
    """Legend right of the axes, one column per 14 entries (a 22-run headline stays readable)."""
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=_legend_columns(entries))


def plot_by_method(rows: list[dict], task: str, path: str | Path) -> bool:
    """One line per row (extended model) vs length, 95% intervals as error bars; base dashed grey. False if no data."""
    series = []
    for r in rows:
        pts = sorted((k.length, v) for k, v in r["metrics"].items() if k.task == task and k.is_cell and k.model == "extended")
        if pts:
            series.append((r, pts))
    if not series:
        return False
    bases = {tuple(sorted((k.length, v) for k, v in r["metrics"].items() if k.task == task and k.is_cell
                          and k.model == "base")) for r in rows}
    bases.discard(())
    entries = len(series) + bool(bases)  # legend entries: one per run, plus the base model
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7 + 3.5 * (_legend_columns(entries) - 1), 4))  # room for the legend
    for i, pts in enumerate(sorted(bases)):
        ax.plot(*zip(*pts), "--", color="grey", zorder=3, label="base model" if i == 0 else None)
    for i, (r, pts) in enumerate(series):  # markers cycle too, so >10 lines stay distinguishable
        xs, ys = zip(*pts)
        los = [get(r, task, n, stat="lo") for n in xs]
        his = [get(r, task, n, stat="hi") for n in xs]
        err = None
        if all(v is not None for v in los + his):
            err = [[y - lo for y, lo in zip(ys, los)], [hi - y for y, hi in zip(ys, his)]]
        dodge = 2 ** (0.025 * (i - (len(series) - 1) / 2))  # spread the error bars apart a little (log x)
        ax.errorbar([x * dodge for x in xs], ys, yerr=err, fmt="-", marker=MARKERS[i % len(MARKERS)], capsize=3,
                    label=_label(r))
    _log2_lengths(ax, sorted({n for _, pts in series for n, _ in pts}))
    if task in LOWER_IS_BETTER:
        _log_ppl(ax)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(task_label(task))
    ax.grid(alpha=0.3)
    _legend(ax, entries)
    fig.tight_layout()
    atomic_savefig(fig, path)
    return True


def plot_ppl_by_position(rows: list[dict], path: str | Path) -> bool:
    """Perplexity per position bucket, one panel per length, one line per row (base dashed). False if no data."""
    keys = {k for r in rows for k in r["metrics"] if k.task == "ppl" and k.detail and k.detail.startswith("bucket")}
    if not keys:
        return False
    lengths = sorted({k.length for k in keys})
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(lengths), figsize=(4 * len(lengths) + 2, 3.8), squeeze=False, sharey=True)
    for ax, length in zip(axes[0], lengths):
        buckets = sorted({k.detail for k in keys if k.length == length}, key=lambda b: int(b[6:]))
        xs = [(i + 0.5) / len(buckets) * length for i in range(len(buckets))]
        base = next((r for r in rows if get(r, "ppl", length, "base", detail=buckets[0]) is not None), None)
        if base:
            ax.plot(xs, [get(base, "ppl", length, "base", detail=b) for b in buckets], "--", color="grey", label="base model")
        for i, r in enumerate(rows):
            ys = [get(r, "ppl", length, detail=b) for b in buckets]
            if all(y is not None for y in ys):
                ax.plot(xs, ys, "-", marker=MARKERS[i % len(MARKERS)], label=_label(r))
        ax.set_title(f"{length} tokens")
        ax.set_xlabel("token position (bucket centre)")
        ax.grid(alpha=0.3)
    _log_ppl(axes[0][0])
    axes[0][0].set_ylabel("perplexity")
    _legend(axes[0][-1], len(axes[0][-1].get_legend_handles_labels()[0]))
    fig.tight_layout()
    atomic_savefig(fig, path)
    return True


def plot_data_efficiency(rows: list[dict], path: str | Path) -> bool:
    """Two panels vs fine-tuning budget (symlog x, 0 = training-free): effective length, and perplexity at
    2 x target (or the longest shared length, :func:`efficiency_ppl_length`). One line per method. False if
    no row has an outcome."""
    points = efficiency_points(rows)
    if not points:
        return False
    task = efficiency_task(rows)
    plt = _pyplot()
    fig, (ax_len, ax_ppl) = plt.subplots(1, 2, figsize=(14, 4.5))
    for i, (method, pts) in enumerate(points.items()):
        marker = MARKERS[i % len(MARKERS)]
        eff = [(b, e) for b, e, _ in pts if e is not None]
        ppl = [(b, p) for b, _, p in pts if p is not None]
        if eff:
            ax_len.plot(*zip(*eff), "-", marker=marker, label=method)
        if ppl:
            ax_ppl.plot(*zip(*ppl), "-", marker=marker, label=method)
    for ax in (ax_len, ax_ppl):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("fine-tuning budget (sequences)")  # defined in the section text
        ax.grid(alpha=0.3)
    reached = sorted({int(e) for pts in points.values() for _, e, _ in pts if e is not None})
    ax_len.set_yticks(reached, [str(n) for n in reached])  # linear: 0 (never reached) stays on the axis
    ax_len.set_ylabel(f"effective length, {task} (tokens)" if task else "effective length")
    ax_len.set_title("how far it reaches")
    ax_ppl.set_ylabel(f"perplexity at {efficiency_ppl_label(rows)}")
    ax_ppl.set_title("perplexity at the longest length")
    if any(p is not None for pts in points.values() for _, _, p in pts):
        _log_ppl(ax_ppl)
    legend_ax = ax_ppl if ax_ppl.get_legend_handles_labels()[0] else ax_len
    _legend(legend_ax, len(legend_ax.get_legend_handles_labels()[0]))
    fig.tight_layout()
    atomic_savefig(fig, path)
    return True


# --------------------------------------------------------------------------- glue


def summaries_as_show(folders: list[str | Path], metrics_file: str = METRICS_FILE) -> list:
    """Experiment folders (each with ``params.yaml`` and ``metrics/summary.json``) in ``dvc exp show --json``'s shape."""
    import yaml

    from longctx.io import read_json

    out = []
    for folder in map(Path, folders):
        params_file, summary_file = folder / PARAMS_FILE, folder / metrics_file
        if not params_file.exists() or not summary_file.exists():
            raise FileNotFoundError(f"--summaries {folder}: needs {PARAMS_FILE} and {metrics_file} there")
        data = {"params": {PARAMS_FILE: {"data": yaml.safe_load(params_file.read_text())}},
                "metrics": {metrics_file: {"data": read_json(summary_file)}}}
        out.append({"rev": str(folder), "name": folder.name, "data": data, "error": None, "experiments": None,
                    "folder": True})
    return out


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
    notes: str | None = None,
) -> Path:
    """Write ``<out>/report.md`` and its plots (``<task>_by_method.png`` per task, ``ppl_by_position.png``,
    ``data_efficiency.png``); return the report path.

    ``notes``: Markdown placed under the "Reaching 2 × the native window" table (why methods miss it).
    ``show`` (already parsed ``dvc exp show --json``, or rows in its shape, e.g. from
    :func:`summaries_as_show`) skips the subprocess; ``source`` then names where they came from in the
    report's header. A relative ``out`` is relative to the current directory, not to ``repo``.
    """
    if show is None:
        show = dvc_exp_show(repo, revs, all_commits, all_branches, all_tags)
    rows = collect_rows(show, metrics_file=metrics_file, include_workspace=include_workspace)
    out = Path(out)
    ranked = [r for r in rows if r["metrics"]]
    plots = {task: plot_file(task) for task in tasks_of(ranked) if plot_by_method(ranked, task, out / plot_file(task))}
    if plot_ppl_by_position(ranked, out / POSITION_PLOT):
        plots["position"] = POSITION_PLOT
    if plot_data_efficiency(ranked, out / EFFICIENCY_PLOT):
        plots["efficiency"] = EFFICIENCY_PLOT
    flags = [f"--rev {r}" for r in revs] + ["--all-commits"] * all_commits + ["--all-branches"] * all_branches
    flags += ["--all-tags"] * all_tags
    source = source or " ".join(["dvc exp show --json", *flags])
    report = out / "report.md"
    atomic_write_text(report, render_markdown(rows, plots, source=source, notes=notes))
    return report
