"""benchmarks/gpu_host_headline.sh validates every GPU experiment's params before it runs anything.

The GPU host gets one call: a key the queue's ``-S`` overrides name but params.yaml lacks, or a value
longctx.params refuses, must fail here, not there. The dry run (``HEADLINE_DRY=1``) rewrites a copy of
params.yaml as the GPU run does, applies each experiment's overrides and parses the result.
"""

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/gpu_host_headline.sh"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("dvc") is None or shutil.which("bash") is None,
                                reason="needs DVC (the script checks it) and bash")


def dry_run(tmp_path, edit=lambda script: script):
    """Run the script's dry run on copies of it (``edit`` applied) and of params.yaml; (process, params after)."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / SCRIPT).write_text(edit((ROOT / SCRIPT).read_text()))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUT": str(tmp_path / "out"), "HEADLINE_DRY": "1"}
    proc = subprocess.run(["bash", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return proc, (tmp_path / "params.yaml").read_text()


def test_every_gpu_experiment_has_valid_params_and_its_budget(tmp_path):
    before = (ROOT / "params.yaml").read_text()
    proc, after = dry_run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if " budget " in line}
    assert len(lines) == 27 and "27 experiments, params valid" in proc.stdout
    t1 = ("cream", "pose", "randpos")  # YaRN frequencies without the temperature: named -t1
    for name in ("abf", "entropy_abf", "pi", "yarn", "cream", "pose", "randpos"):
        assert "budget   96 = 3 x 1 x 32" in lines[f"{name}-96" + ("-t1" if name in t1 else "")]
    for name in ("abf", "entropy_abf", "yarn", "cream", "pose"):  # the data-efficiency sweep: 0, 24, 96
        suffix = "-t1" if name in t1 else ""
        assert "budget    0" in lines[f"{name}-0{suffix}"] and "budget   24" in lines[f"{name}-24{suffix}"]
    assert "budget   96" in lines["yarn-96-t1"] and "budget    0" in lines["yarn-0-t1"]
    for name in t1:  # the ~10^3 point of the 8k recipes
        assert "budget 1024 = 32 x 1 x 32, seq_len 8192" in lines[f"{name}-1024-t1"]
    assert "seq_len 32768" in lines["pi-96"] and "seq_len 8192" in lines["pose-96-t1"]
    assert after == before  # the dry run restores params.yaml and touches no git state
    assert not (tmp_path / ".git").exists()


def test_a_bad_override_stops_the_dry_run(tmp_path):
    proc, after = dry_run(tmp_path, lambda s: s.replace("recipes.$3.train.steps=$STEPS", "recipes.$3.train.stepz=$STEPS"))
    assert proc.returncode != 0 and "recipes.entropy_abf.train.stepz: no such key" in proc.stdout + proc.stderr
    assert after == (ROOT / "params.yaml").read_text()  # restored on failure too
