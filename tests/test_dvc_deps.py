"""dvc.yaml is trustworthy: every stage depends on all the code it runs, and every file it writes is declared.

The `longctx` modules a stage runs are computed from its script's imports (tools/stage_deps.py), never
listed by hand here, so the test stays right when code moves between modules.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_modeling import base_dir  # noqa: F401  (module fixture: a tiny materialised base model)
from tools.stage_deps import PACKAGE, ROOT, dep_entries, import_closure, is_covered, stage_closures, stage_script

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
CLOSURES = stage_closures(STAGES)


def test_closure_follows_imports_inside_functions_and_parent_packages(tmp_path):
    """A lazy import counts, and so does every package above a module (its __init__ runs first)."""
    (tmp_path / "lazy.py").write_text("def f():\n    from longctx.data import packing\n")
    (tmp_path / "plain.py").write_text("import longctx.data.packing\n")
    lazy = import_closure(tmp_path / "lazy.py")
    assert {"longctx/__init__.py", "longctx/data/__init__.py", "longctx/data/packing.py"} <= lazy
    assert lazy == import_closure(tmp_path / "plain.py")
    (tmp_path / "none.py").write_text("import json\n")
    assert import_closure(tmp_path / "none.py") == set()
    assert is_covered("longctx/data/packing.py", ["longctx/data"])
    assert is_covered("longctx/rope.py", ["longctx/rope.py"])
    assert not is_covered("longctx/database.py", ["longctx/data"])
    every_data_module = {p.relative_to(ROOT).as_posix() for p in (ROOT / "longctx" / "data").glob("*.py")}
    assert dep_entries(every_data_module | {"longctx/io.py"}) == ["longctx/data", "longctx/io.py"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_it_runs(name):
    deps = STAGES[name].get("deps", [])
    script = stage_script(STAGES[name]["cmd"])
    assert is_covered(script, deps), f"dvc.yaml stage {name!r}: its script {script} is not a dep"
    missing = sorted(f for f in CLOSURES[name] if not is_covered(f, deps))
    assert not missing, (f"dvc.yaml stage {name!r} runs {missing} without depending on them: "
                         "run `python tools/stage_deps.py --write`")


def test_static_closure_holds_what_the_interpreter_loads():
    """Cross-check against Python: every longctx module that importing a stage script loads is in its
    static closure (the static one may hold more: imports inside functions)."""
    scripts = {name: str(ROOT / stage_script(stage["cmd"])) for name, stage in STAGES.items()}
    code = f"""
import importlib.util, json, sys
loaded = {{}}
for name, script in {scripts!r}.items():
    for mod in [m for m in sys.modules if m.split(".")[0] == {PACKAGE!r}]:
        del sys.modules[mod]
    spec = importlib.util.spec_from_file_location("stage_under_test", script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    loaded[name] = sorted(m.__file__ for k, m in sys.modules.items() if k.split(".")[0] == {PACKAGE!r})
print(json.dumps(loaded))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    for name, files in json.loads(proc.stdout.splitlines()[-1]).items():
        loaded = {Path(f).resolve().relative_to(ROOT).as_posix() for f in files}
        assert loaded, name
        assert loaded <= CLOSURES[name], f"{name}: loaded outside the static closure: {loaded - CLOSURES[name]}"


def dvc(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.skipif(shutil.which("dvc") is None, reason="needs the dvc command")
def test_editing_a_module_makes_dvc_status_report_every_stage_that_runs_it(tmp_path):
    """In a copy of the project's code with dvc.yaml's stages reduced to their code deps and params (the
    models and data are not needed to hash code), edit a module and ask `dvc status`: exactly the stages
    whose scripts import it, directly or not, are reported."""
    shutil.copytree(ROOT / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", tmp_path)
    code_only = {name: {"cmd": s["cmd"], "params": s.get("params", []),
                        "deps": [d for d in s["deps"] if is_covered(d, ["stages", PACKAGE])]}
                 for name, s in STAGES.items()}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": code_only}, sort_keys=False))
    dvc(["init", "--no-scm", "-q"], tmp_path)
    dvc(["commit", "-f", "-q"], tmp_path)
    assert json.loads(dvc(["status", "--json"], tmp_path)) == {}
    # One module per stage, the one the fewest stages run: a check that tells stages apart.
    users = {f: {n for n, c in CLOSURES.items() if f in c} for c in CLOSURES.values() for f in c}
    edited = {min(sorted(c), key=lambda f: len(users[f])) for c in CLOSURES.values()}
    for module in sorted(edited):
        path = tmp_path / module
        original = path.read_text()
        path.write_text(original + "\n# edited\n")
        reported = set(json.loads(dvc(["status", "--json"], tmp_path)))
        path.write_text(original)
        assert reported == users[module], f"editing {module}: dvc status reported {sorted(reported)}"
    assert json.loads(dvc(["status", "--json"], tmp_path)) == {}


def declared_outputs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]


def cached_outputs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics", "plots")
            for o in stage.get(key, []) if not (isinstance(o, dict) and next(iter(o.values())).get("cache") is False)]


def test_every_tracked_result_file_is_a_declared_uncached_output():
    """A file under metrics/ or plots/ that git tracks but no stage declares keeps old values when a
    stage is restored from the cache; a cached output must not be in git."""
    tracked = subprocess.run(["git", "ls-files", "metrics", "plots", "models", "data"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    declared = [o for s in STAGES.values() for o in declared_outputs(s)]
    cached = [o for s in STAGES.values() for o in cached_outputs(s)]
    tracked = [f for f in tracked if not f.endswith(".gitignore")]
    assert [f for f in tracked if not is_covered(f, declared)] == []
    assert [f for f in tracked if is_covered(f, cached)] == []


def test_training_curves_are_declared_outputs(base_dir, tmp_path):  # noqa: F811
    """Every file the finetune stage's dvclive logger writes lies inside a declared output of the stage."""
    pytest.importorskip("dvclive")
    from longctx.modeling import make_extended_model
    from longctx.params import TrainParams
    from longctx.training import finetune
    from tests.test_train import write_sft

    stage = STAGES["finetune"]
    cmd = stage["cmd"].split()
    live_dir = cmd[cmd.index("--live") + 1]
    make_extended_model(base_dir, tmp_path / "ext", "pi", {}, 256)
    write_sft(tmp_path / "train.jsonl", n=2, length=32)
    finetune(tmp_path / "ext", tmp_path / "train.jsonl", tmp_path / "ft", TrainParams(steps=2, seq_len=32),
             dtype="float32", live_dir=tmp_path / "live", checkpoint_dir=tmp_path / "ck")
    written = [f"{live_dir}/{p.relative_to(tmp_path / 'live').as_posix()}"
               for p in (tmp_path / "live").rglob("*") if p.is_file()]
    assert written and [f for f in written if not is_covered(f, declared_outputs(stage))] == []


def test_ci_runs_the_readme_test_command():
    """.ci/run runs the README's test command, verbatim (a one-liner that makes its own venv)."""
    readme = (ROOT / "README.md").read_text()
    command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "python3 -m venv .venv && . .venv/bin/activate" in command and command.endswith("pytest -q")
    assert f"\n    {command}\n" in readme
