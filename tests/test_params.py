"""The shipped params.yaml parses, and bad values stop with one line naming the key (issue: robustness)."""

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from longctx.methods import METHODS
from longctx.params import ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_parse():
    p = load_params(ROOT / "params.yaml")
    assert p.method in METHODS
    assert p.train.lr == pytest.approx(1e-4)


def test_every_method_block_is_valid():
    for name in METHODS:
        raw = copy.deepcopy(SHIPPED)
        raw["method"] = name
        if name == "none":
            raw["target_length"] = 8192
        parse_params(raw).method_params()
    assert set(SHIPPED["methods"]) == set(METHODS), "params.yaml must list a block for every method"


def test_yaml_scientific_notation_string_is_a_float():
    raw = copy.deepcopy(SHIPPED)
    raw["train"]["lr"] = "3e-05"  # what `dvc exp run -S train.lr=3e-5` writes back
    assert parse_params(raw).train.lr == pytest.approx(3e-5)


def edit(path: str, value):
    raw = copy.deepcopy(SHIPPED)
    keys = path.split(".")
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return raw


BAD = [
    ("method", "magic", r"method: unknown method 'magic'; allowed: none, pi"),
    ("methods.magic", {}, r"methods.magic: unknown method"),
    ("methods.yarn.bogus", 1, r"methods.yarn.bogus: unknown key; allowed: beta_fast, beta_slow"),
    ("methods.entropy_abf.skip_layers", -1, r"methods.entropy_abf.skip_layers: must be in \[0, 100000\], got -1"),
    ("methods.entropy_abf.rope_theta", "big", r"methods.entropy_abf.rope_theta: expected a number, got 'big'"),
    ("target_length", 0, r"target_length: must be in \(0, 16777216\], got 0"),
    ("target_length", "long", r"target_length: expected a number"),
    ("train.steps", -1, r"train.steps: must be in \[0, 1000000000\], got -1"),
    ("train.lr", 0, r"train.lr: must be in \(0, 1\], got 0"),
    ("train.lr", "fast", r"train.lr: expected a number"),
    ("train.mode", "half", r"train.mode: 'half' is not allowed; allowed: lora, full"),
    ("train.seq_len", 0, r"train.seq_len: must be in \[1, 16777216\], got 0"),
    ("train.batch_size", -2, r"train.batch_size: must be in \[1, 1000000\], got -2"),
    ("train.beta2", 1.5, r"train.beta2: must be in \[0, 1\)"),
    ("train.scheduler", "step", r"train.scheduler: 'step' is not allowed"),
    ("train.lora.r", 0, r"train.lora.r: must be in \[1, 65536\], got 0"),
    ("train.lora.dropout", 1.0, r"train.lora.dropout: must be in \[0, 1\)"),
    ("train.lora.target_modules", [], r"train.lora.target_modules: must name at least one"),
    ("train.gradient_checkpointing", "maybe", r"train.gradient_checkpointing: 'maybe' is not allowed; allowed: none, full, selective"),
    ("train.sdpa_backend", "xformers", r"train.sdpa_backend: 'xformers' is not allowed; allowed: auto, flash, fa4"),
    ("train.epochs", 2, r"train.epochs: unknown key; did you mean 'steps'\?; allowed: steps, mode"),
    ("eval.lengths", [], r"eval.lengths: must list at least one"),
    ("eval.lengths", [4096, 100], r"eval.lengths\[1\]: must be in \[256, 16777216\], got 100"),
    ("eval.passkey.depths", [0.5, 1.5], r"eval.passkey.depths\[1\]: must be in \[0, 1\]"),
    ("eval.passkey.samples", 0, r"eval.passkey.samples: must be in \[1, 1000000\], got 0"),
    ("eval.tasks", ["x"], r"eval.tasks: unknown key"),
    ("model.dtype", "int8", r"model.dtype: 'int8' is not allowed"),
    ("model.name_or_path", "./does/not/exist", r"model.name_or_path: ./does/not/exist does not exist"),
    ("methods.selfextend.window", -1, r"methods.selfextend.window: must be in \[0, 16777216\], got -1"),
    ("methods.cream.frequency", "llama3", r"methods.cream.frequency: 'llama3' is not allowed; allowed: pi, ntk, yarn"),
    ("methods.cream.p_continuity", 2, r"methods.cream.p_continuity: must be in \[0, 1\]"),
    ("methods.pose.num_chunks", 1, r"methods.pose.num_chunks: must be in \[2, 1024\], got 1"),
    ("methods.yarn.beta_slow", 64, r"methods.yarn: need beta_fast > beta_slow"),
    ("bogus_top", 1, r"bogus_top: unknown key; allowed: model, method, target_length, methods, recipe, recipes, data, train, eval"),
]


@pytest.mark.parametrize("path,value,message", BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_value_names_the_key(path, value, message):
    raw = edit(path, value)
    # Errors are checked for the method in force, so point `method` at the block we broke.
    parts = path.split(".")
    if parts[0] == "methods" and parts[1] in METHODS:
        raw["method"] = parts[1]
    with pytest.raises(ParamsError, match=message) as err:
        parse_params(raw)
    assert "\n" not in str(err.value)  # one line


def test_selfextend_window_below_group(tmp_path):
    from longctx.methods import build_extension

    raw = edit("methods.selfextend", {"group_size": 8, "window": 4})
    raw["method"] = "selfextend"
    with pytest.raises(ParamsError, match=r"methods.selfextend.window: must be >= group_size \(8\)"):
        parse_params(raw)
    with pytest.raises(ValueError, match="window: must be below the native window"):
        build_extension("selfextend", {"window": 8192}, 32768, 8192, 1e5, 64)


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_malformed_yaml(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(f)


COMBINATIONS = [
    ({"method": "cream", "train.seq_len": 65536}, r"train.seq_len: cream trains a short window"),
    ({"train.mode": "full", "train.lora.trainable": ["norm"]}, r"train.lora.trainable: only for train.mode=lora"),
]


@pytest.mark.parametrize("edits,message", COMBINATIONS)
def test_mutually_constrained_keys(edits, message):
    raw = copy.deepcopy(SHIPPED)
    for path, value in edits.items():
        node = raw
        *head, last = path.split(".")
        for k in head:
            node = node[k]
        node[last] = value
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


STAGE_CASES = [
    ("extend", "method", "magic", "models/extended"),
    ("finetune", "train.lr", 0, "models/finetuned"),
    ("eval_samples", "eval.passkey.depths", [2.0], "data/eval"),
]


@pytest.mark.parametrize("stage,path,value,output", STAGE_CASES)
def test_stage_stops_with_one_line_and_writes_nothing(stage, path, value, output, tmp_path):
    import shlex
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(edit(path, value)))
    _, script_path, *args = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    proc = subprocess.run([sys.executable, str(ROOT / script_path), *args], cwd=tmp_path, capture_output=True,
                          text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and path in lines[0], proc.stderr
    assert not (tmp_path / output).exists()


def test_name_tables_match_their_implementations():
    """params.py imports no implementation module, so it keeps plain-name tables; they must stay in step."""
    from longctx import kernels, shapes
    from longctx.evaluation.longbench import DATASET2METRIC
    from longctx.methods import METHODS
    from longctx.params import LONGBENCH_TASKS, METHOD_PARAMS, SHAPE_NAMES

    assert set(LONGBENCH_TASKS) == set(DATASET2METRIC)
    assert set(SHAPE_NAMES) == set(shapes.SHAPES)
    assert list(METHOD_PARAMS) == list(METHODS)
    assert kernels.CHECKPOINTING and kernels.SDPA_BACKENDS


def test_params_module_is_the_bottom_of_the_import_graph():
    import subprocess
    import sys

    code = "import sys, longctx.params; print(sorted(m for m in sys.modules if m.startswith(('torch', 'transformers', 'longctx.'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}).stdout.strip()
    assert out == "['longctx.params']"


def test_defaults_are_the_shipped_params():
    """One set of defaults: the dataclasses; params.yaml shows them (parse of an empty file == shipped file).
    The paper recipes (``recipes:``) exist only in params.yaml; the default ``recipe: none`` applies none."""
    shipped = parse_params(copy.deepcopy(SHIPPED))
    assert shipped.recipe == "none" and set(shipped.recipes) >= {"none", "entropy_abf", "cream_chat", "pi"}
    assert parse_params({}) == dataclasses.replace(shipped, recipes={})
