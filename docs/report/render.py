"""Render docs/report/ from the committed H100 sweep (docs/report/sweep.json) with longctx.report.

    PYTHONPATH=$PWD python3 docs/report/render.py

The sweep stored accuracies only; its sample counts are recorded in docs/RESULTS.md ("10 prompts per
length (5 depths x 2 keys)"): n = 10 per length cell and 2 per depth cell, from which the Wilson
intervals follow. Native window 8192 (SmolLM2-135M). A new GPU run (docs/headline.md) writes its own
counts and replaces this.
"""
import json
from longctx.aggregate import summarize
from longctx.evaluation.metric_key import MetricKey
from longctx.evaluation.stats import wilson_interval
from longctx.report import write_report

sweep = json.load(open("docs/report/sweep.json"))
show = []
for name in ("none", "pi", "yarn", "abf", "entropy_abf", "selfextend", "cream"):
    summary = sweep[name]
    per_model = {"base": {"info.native_window": 8192}, "extended": {"info.native_window": 8192}}
    train = {}
    for key, value in summary.items():
        k = MetricKey.parse(key)
        if k.task == "train.steps" or key.startswith("train."):
            train[key[len("train."):]] = value
            continue
        cell = k.of(None)
        per_model[k.model][cell.format()] = value
        if k.task == "passkey" and k.length is not None and k.stat is None:
            n = 2 if k.depth is not None else 10
            lo, hi = wilson_interval(round(value * n), n)
            per_model[k.model].update({cell.with_stat("lo").format(): round(lo, 4),
                                       cell.with_stat("hi").format(): round(hi, 4), cell.with_stat("n").format(): n})
    params = {"method": name, "target_length": 32768,
              "train": {"steps": train["steps"], "mode": "lora", "batch_size": 1, "grad_accum": 1}}
    show.append({"rev": f"sweep-{name}", "name": name, "error": None, "experiments": None,
                 "data": {"params": {"params.yaml": {"data": params}},
                          "metrics": {"metrics/summary.json": {"data": summarize(per_model, train)}}}})
write_report("docs/report", show=show,
             source="docs/report/sweep.json (the H100 sweep of docs/RESULTS.md; n = 10 passkey prompts per length, "
                    "2 per depth, as recorded there)")
