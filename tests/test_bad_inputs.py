"""Bad inputs and faults (issue 18): each ends in one line naming the key, and no output is corrupted.

Three layers, fastest first:
- the params check alone (``parse_params``): typos, non-finite, non-integral, out-of-bounds values;
- checks that need the model (``check_against_model`` with facts read from a saved tiny model);
- stage scripts run as DVC runs them (``cmd`` from dvc.yaml) in a scratch folder: exit code 2, exactly one
  ``error: <key>: ...`` line on stderr, and the stage's outputs not written;
and the faults that need DVC itself: cache corruption through shared inodes, a stale local data source.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from longctx.io import atomic_write_json, copy_file
from longctx.params import (
    ModelFacts,
    ParamsError,
    check_against_model,
    load_params,
    parse_params,
    read_model_facts,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())
FIXTURES = ROOT / "tests" / "fixtures" / "data"
HAS_DVC = shutil.which("dvc") is not None


def edited(**edits) -> dict:
    """The shipped params with ``a.b.c=value`` edits (``__`` in a keyword stands for ``.``)."""
    raw = copy.deepcopy(SHIPPED)
    for path, value in edits.items():
        node = raw
        *head, last = path.split("__")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    return raw


def one_line_error(raw: dict) -> str:
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------------
# 1. The params check: (edits, the message it must give)

PARAMS_CASES = [
    # typos anywhere name the key and the nearest valid one
    ({"trian": {"steps": 1}}, r"^trian: unknown key; did you mean 'train'\?"),
    ({"methd": "yarn"}, r"^methd: unknown key; did you mean 'method'\?"),
    ({"train__stpes": 3}, r"^train.stpes: unknown key; did you mean 'steps'\?"),
    ({"train__lora__rr": 3}, r"^train.lora.rr: unknown key; did you mean 'r'\?"),
    ({"eval__passkey__depth": [0.5]}, r"^eval.passkey.depth: unknown key; did you mean 'depths'\?"),
    ({"model__nme_or_path": "x"}, r"^model.nme_or_path: unknown key; did you mean 'name_or_path'\?"),
    ({"methods__yarn__beta_fats": 30}, r"^methods.yarn.beta_fats: unknown key; did you mean 'beta_fast'\?"),
    ({"methods__yarnn": {}}, r"^methods.yarnn: unknown method; did you mean 'yarn'\?"),
    ({"data__num_sample": 3}, r"^data.num_sample: unknown key; did you mean 'num_samples'\?"),
    ({"data__sources": [{"type": "embedded_chitchat", "wieght": 1}]},
     r"^data.sources\[0\].wieght: unknown key; did you mean 'weight'\?"),
    ({"method": "entropy-abf"}, r"^method: unknown method 'entropy-abf'; did you mean 'entropy_abf'\?"),
    ({"train__scheduler": "cosin"}, r"^train.scheduler: 'cosin' is not allowed; allowed: cosine, linear, constant; "
                                    r"did you mean 'cosine'\?"),
    # non-finite numbers, as YAML writes them and as `dvc exp run -S` writes them
    ({"train__lr": float("inf")}, r"^train.lr: must be a finite number, got inf"),
    ({"train__lr": "inf"}, r"^train.lr: must be a finite number, got 'inf'"),
    ({"train__lr": float("nan")}, r"^train.lr: must be a finite number, got nan"),
    ({"train__max_grad_norm": float("nan")}, r"^train.max_grad_norm: must be a finite number"),
    ({"train__weight_decay": float("-inf")}, r"^train.weight_decay: must be a finite number"),
    ({"method": "abf", "methods__abf__rope_theta": float("inf")}, r"^methods.abf.rope_theta: must be a finite number"),
    ({"method": "abf", "methods__abf__rope_theta": float("nan")}, r"^methods.abf.rope_theta: must be a finite number"),
    ({"methods__entropy_abf__rope_theta": float("inf")}, r"^methods.entropy_abf.rope_theta: must be a finite number"),
    ({"method": "cream", "methods__cream__sigma": float("nan")}, r"^methods.cream.sigma: must be a finite number"),
    ({"methods__yarn__beta_fast": float("inf")}, r"^methods.yarn.beta_fast: must be a finite number"),
    ({"target_length": float("inf")}, r"^target_length: must be a finite number, got inf"),
    ({"eval__passkey__depths": [float("nan")]}, r"^eval.passkey.depths\[0\]: must be a finite number"),
    ({"data__embedded_max_fraction": float("nan")}, r"^data.embedded_max_fraction: must be a finite number"),
    ({"data__sources": [{"type": "embedded_chitchat", "weight": float("inf")}]},
     r"^data.sources\[0\].weight: must be a finite number"),
    # absurd sizes
    ({"target_length": 1e12}, r"^target_length: must be in \(0, 16777216\], got 1000000000000"),
    ({"eval__lengths": [1_000_000_000]}, r"^eval.lengths\[0\]: must be in \[256, 16777216\], got 1000000000"),
    ({"train__seq_len": 10**10}, r"^train.seq_len: must be in \[1, 16777216\]"),
    ({"data__max_tokens": 10**9}, r"^data.max_tokens: must be in \[1, 16777216\]"),
    ({"train__steps": 1e20}, r"^train.steps: must be in \[0, 1000000000\]"),
    ({"methods__entropy_abf__rope_theta": 1e300}, r"^methods.entropy_abf.rope_theta: must be in \[0, 1e\+15\]"),
    # whole numbers: never silently truncated
    ({"method": "selfextend", "methods__selfextend__group_size": 2.9},
     r"^methods.selfextend.group_size: expected a whole number, got 2.9"),
    ({"train__steps": 2.5}, r"^train.steps: expected a whole number, got 2.5"),
    ({"data__num_samples": 2.5}, r"^data.num_samples: expected a whole number, got 2.5"),
    ({"eval__lengths": [4096.5]}, r"^eval.lengths\[0\]: expected a whole number"),
    ({"train__steps": True}, r"^train.steps: expected a number, got True"),
    # evaluation lengths: strictly increasing, no repeats
    ({"eval__lengths": [4096, 4096, 8192]}, r"^eval.lengths\[1\]: lengths must be strictly increasing without repeats"),
    ({"eval__lengths": [8192, 4096]}, r"^eval.lengths\[1\]: lengths must be strictly increasing"),
    ({"eval__passkey__lengths": [8192, 4096]}, r"^eval.passkey.lengths\[1\]: lengths must be strictly increasing"),
    # wrong shapes: one line, not a TypeError
    ({"methods__yarn": [32, 1]}, r"^methods.yarn: expected a mapping of keys, got \[32, 1\]"),
    ({"methods": [1, 2]}, r"^methods: expected a mapping of method name -> parameters"),
    ({"train": "fast"}, r"^train: expected a mapping of keys, got 'fast'"),
    ({"eval__lengths": 4096}, r"^eval.lengths: expected a list, got 4096"),
    ({"train__lora__target_modules": "q_proj"}, r"^train.lora.target_modules: expected a list"),
    ({"data__sources": {"type": "sharegpt"}}, r"^data.sources: expected a list of sources"),
    ({"model__name_or_path": None}, r"^model.name_or_path: expected a string, got None"),
    ({"train__fused_ce": "maybe"}, r"^train.fused_ce: expected true or false, got 'maybe'"),
    # data sources named in params
    ({"data__sources": [{"type": "sharegpt", "path_or_id": "no/such/chats.jsonl"}]},
     r"^data.sources\[0\].path_or_id: no/such/chats.jsonl: no such file or folder"),
    ({"data__sources": [{"type": "sharegpt"}]}, r"^data.sources\[0\].path_or_id: required for type 'sharegpt'"),
    ({"model__name_or_path": "shape:llama-9000"}, r"^model.name_or_path: 'shape:llama-9000' is not allowed"),
    # recipes: the one in force and every other one
    ({"recipe": "cream_chta"}, r"^recipe: unknown recipe 'cream_chta'"),
    ({"recipes__mine": {"train": {"stpes": 5}}}, r"^recipes.mine.train.stpes: unknown key; did you mean 'steps'\?"),
    ({"recipes__mine": {"data": {"num_samples": 1.5}}}, r"^recipes.mine.data.num_samples: expected a whole number"),
    ({"recipes__mine": {"eval": {}}}, r"^recipes.mine.eval: a recipe sets only data and train"),
]


@pytest.mark.parametrize("edits,message", PARAMS_CASES, ids=[m.split(":")[0].strip("^\\") + f"-{i}"
                                                             for i, (_, m) in enumerate(PARAMS_CASES)])
def test_bad_params_value_is_one_line_naming_the_key(edits, message):
    msg = one_line_error(edited(**edits))
    assert re.search(message, msg), msg


def test_integral_floats_are_accepted_everywhere():
    """``1e3`` means 1000 in every int key (data and train alike); only a fractional part is an error."""
    raw = edited(data__num_samples=1e3, train__steps="1e3", eval__lengths=[4096.0, 8.192e3], target_length="3.2768e4")
    p = parse_params(raw)
    assert (p.data.num_samples, p.train.steps, p.eval.lengths, p.target_length) == (1000, 1000, [4096, 8192], 32768)
    assert isinstance(p.data.num_samples, int) and isinstance(p.train.steps, int)


def test_params_yaml_with_bad_bytes_names_the_line(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_bytes(b"method: yarn\ntarget_length: 32768\n# caf\xe9\n")
    with pytest.raises(ParamsError, match=r"params.yaml:3: not UTF-8 text \(byte 0xe9\)"):
        load_params(f)


def test_yaml_inf_and_nan_spellings_are_refused(tmp_path):
    """What a user types: `.inf`, `.nan` in params.yaml, `inf` through `-S`."""
    for text, key in [("train:\n  lr: .inf\n", "train.lr"), ("methods:\n  abf:\n    rope_theta: .nan\n", "methods.abf"),
                      ("target_length: .inf\n", "target_length")]:
        f = tmp_path / "params.yaml"
        f.write_text(text)
        with pytest.raises(ParamsError, match=rf"^{re.escape(key)}.*must be a finite number"):
            load_params(f)


# ---------------------------------------------------------------------------------------------------
# 2. Checks that need the model

FACTS = ModelFacts(native_window=8192, num_layers=30, hidden_size=576, intermediate_size=1536, num_kv_heads=3,
                   head_dim=64, vocab_size=49152, parameters=134_515_008,
                   module_names={"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                 "embed_tokens", "norm", "input_layernorm", "post_attention_layernorm"})

MODEL_CASES = [
    ({"target_length": 8192}, r"^target_length: must exceed the model's native window \(8192\) for method entropy_abf"),
    ({"target_length": 4096, "method": "yarn"}, r"^target_length: must exceed the model's native window"),
    ({"method": "selfextend", "methods__selfextend__window": 8192},
     r"^methods.selfextend.window: must be below the native window \(8192\), got 8192"),
    ({"methods__entropy_abf__skip_layers": 999},
     r"^methods.entropy_abf.skip_layers: must be < the model's 30 layers \(otherwise no layer is scaled\), got 999"),
    ({"methods__entropy_abf__skip_layers": 30}, r"^methods.entropy_abf.skip_layers: must be < the model's 30 layers"),
    ({"train__lora__target_modules": ["q_proj", "bogus_proj"]},
     r"^train.lora.target_modules\[1\]: the model has no module 'bogus_proj'"),
    ({"train__lora__target_modules": ["qproj"]}, r"^train.lora.target_modules\[0\]: .*did you mean 'q_proj'\?"),
    ({"train__lora__trainable": ["embeddings"]}, r"^train.lora.trainable\[0\]: the model has no module 'embeddings'"),
    ({"model__native_window": 65536}, r"^target_length: must exceed the model's native window \(65536\)"),
]


@pytest.mark.parametrize("edits,message", MODEL_CASES, ids=[f"model-{i}" for i in range(len(MODEL_CASES))])
def test_checks_that_need_the_model(edits, message):
    p = parse_params(edited(**edits))  # valid on its own
    with pytest.raises(ParamsError) as err:
        check_against_model(p, FACTS)
    assert re.search(message, str(err.value)) and "\n" not in str(err.value), str(err.value)


def test_shipped_params_pass_the_model_checks():
    check_against_model(parse_params(copy.deepcopy(SHIPPED)), FACTS, eval_memory=True, available=4 << 30)


def test_length_that_cannot_fit_is_refused_with_the_estimate():
    p = parse_params(edited(eval__lengths=[4096, 8192, 4_000_000], eval__passkey__lengths=None))
    with pytest.raises(ParamsError, match=r"^eval.lengths: 4000000 tokens need about [\d.]+ GiB for one forward "
                                          r"pass, only 8.0 GiB available; drop that length$"):
        check_against_model(p, FACTS, eval_memory=True, available=8 << 30)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny Llama materialised like the base_model stage does (weights, tokenizer, native.json)."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from longctx.base_model import materialize_base_model
    from tests.conftest import tiny_llama_config

    src = tmp_path_factory.mktemp("src")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(max_position_embeddings=64)).save_pretrained(src)
    vocab = {f"t{i}": i for i in range(128)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                  eos_token="t1", bos_token="t2")
    tok.save_pretrained(src)
    out = tmp_path_factory.mktemp("base") / "base"
    materialize_base_model(str(src), out)
    return out


def test_model_facts_read_without_torch(base_dir):
    facts = read_model_facts(base_dir)
    assert (facts.native_window, facts.num_layers, facts.num_kv_heads, facts.head_dim) == (64, 2, 2, 16)
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "embed_tokens"} <= facts.module_names


def test_extended_model_shares_no_storage_with_the_base(base_dir, tmp_path):
    """Before: `extend` hard-linked the weights, so base, extended and the DVC cache were one inode."""
    from longctx.modeling import make_extended_model

    make_extended_model(base_dir, tmp_path / "ext", "yarn", {}, 256)
    for f in base_dir.glob("*.safetensors"):
        g = tmp_path / "ext" / f.name
        assert g.read_bytes() == f.read_bytes()
        assert g.stat().st_ino != f.stat().st_ino and g.stat().st_nlink == 1
        with open(g, "r+b") as h:  # an in-place write to the copy leaves the base intact
            h.truncate(100)
        assert f.stat().st_size > 100


# ---------------------------------------------------------------------------------------------------
# 3. Stage scripts, as DVC runs them


def stage_cmd(stage: str) -> list[str]:
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    _, script, *args = shlex.split(cmd)
    return [sys.executable, str(ROOT / script), *args]


def run_stage(stage: str, cwd: Path, params: dict, env: dict | None = None, timeout: float = 300):
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t = time.monotonic()
    proc = subprocess.run(stage_cmd(stage), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    return proc, time.monotonic() - t


def assert_one_line(proc, pattern: str):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert re.search(pattern, lines[0]), lines[0]


def tree_digest(path: Path) -> dict:
    return {str(f.relative_to(path)): hashlib.md5(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture
def workdir(tmp_path, base_dir):
    """A scratch project folder with models/base (copied) and an earlier models/extended (must survive)."""
    shutil.copytree(base_dir, tmp_path / "models" / "base")
    shutil.copytree(base_dir, tmp_path / "models" / "extended")
    return tmp_path


STAGE_CASES = [
    # (stage, params edits, message, outputs that must be untouched)
    ("extend", {"method": "abf", "methods__abf__rope_theta": float("nan")}, r"methods.abf.rope_theta: must be a finite",
     ["models/extended"]),
    ("extend", {"method": "abf", "methods__abf__rope_theta": float("inf")}, r"methods.abf.rope_theta: must be a finite",
     ["models/extended"]),
    ("extend", {"methods__entropy_abf__skip_layers": 999}, r"methods.entropy_abf.skip_layers: must be < the model's 2",
     ["models/extended"]),
    ("extend", {"method": "yarn", "target_length": 64}, r"target_length: must exceed the model's native window \(64\)",
     ["models/extended"]),
    ("extend", {"method": "selfextend", "methods__selfextend__window": 64},
     r"methods.selfextend.window: must be below the native window \(64\)", ["models/extended"]),
    ("extend", {"method": "selfextend", "methods__selfextend__group_size": 2.9},
     r"methods.selfextend.group_size: expected a whole number, got 2.9", ["models/extended"]),
    ("extend", {"methods__yarn": [32, 1]}, r"methods.yarn: expected a mapping", ["models/extended"]),
    ("extend", {"trian": {"steps": 1}}, r"trian: unknown key; did you mean 'train'\?", ["models/extended"]),
    ("finetune", {"method": "yarn", "train__lora__target_modules": ["bogus_proj"]},
     r"train.lora.target_modules\[0\]: the model has no module 'bogus_proj'", ["models/extended"]),
    ("finetune", {"method": "yarn", "train__lr": "inf"}, r"train.lr: must be a finite number", ["models/extended"]),
]


@pytest.mark.parametrize("stage,edits,message,keep", STAGE_CASES, ids=[f"{s}-{i}" for i, (s, *_) in
                                                                      enumerate(STAGE_CASES)])
def test_stage_stops_with_one_line_and_leaves_outputs_alone(stage, edits, message, keep, workdir):
    raw = edited(**edits)
    before = {k: tree_digest(workdir / k) for k in keep}
    proc, _ = run_stage(stage, workdir, raw)
    assert_one_line(proc, rf"^error: {message}")
    assert {k: tree_digest(workdir / k) for k in keep} == before
    assert not (workdir / "models" / "finetuned").exists()
    assert not list((workdir / "models").glob(".*"))  # no half-written temporary folder left behind


def test_local_looking_model_name_fails_fast(tmp_path):
    """Before: `my_local_model` retried the hub for 32-51 s, then a ConnectionError."""
    proc, seconds = run_stage("base_model", tmp_path, edited(model__name_or_path="my_local_model"))
    assert_one_line(proc, r"^error: model.name_or_path: 'my_local_model' is neither an existing path nor "
                          r"(reachable on the hub|in the local hub cache)")
    assert seconds < 30 and not (tmp_path / "models").exists()


def test_offline_model_name_fails_fast(tmp_path):
    proc, _ = run_stage("base_model", tmp_path, edited(model__name_or_path="org/model"), env={"HF_HUB_OFFLINE": "1"})
    assert_one_line(proc, r"^error: model.name_or_path: 'org/model' is neither an existing path nor in the local "
                          r"hub cache \(HF_HUB_OFFLINE is set\)")


def test_local_model_folder_still_loads(base_dir, tmp_path):
    """A real local folder passes the fast check and is materialised as before."""
    from longctx.sources import check_local_or_hub

    assert check_local_or_hub(str(base_dir), "model.name_or_path") == "local"
    proc, _ = run_stage("base_model", tmp_path, edited(model__name_or_path=str(base_dir)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "models" / "base" / "native.json").exists()


def test_longbench_from_an_unreachable_hub_fails_fast(workdir):
    proc, seconds = run_stage("eval_samples", workdir, edited(eval__longbench__enabled=True),
                              env={"HF_HUB_OFFLINE": "1"})
    assert_one_line(proc, r"^error: eval.longbench.source: 'THUDM/LongBench' is neither an existing path nor in the "
                          r"local hub cache")
    assert not (workdir / "data").exists()


# Data sources: the sources stage checks local files (bytes, JSON, with file and line); prepare the records.
def sharegpt(tmp_path: Path, content: bytes, name="chats.jsonl") -> dict:
    (tmp_path / name).write_bytes(content)
    return edited(data__sources=[{"type": "sharegpt", "path_or_id": str(tmp_path / name)}])


DATA_CASES = [
    ("sources", b'{"conversations": [{"from": "human", "value": "hi"}]}\n{"conversations": [\n',
     r"data.sources\[0\].path_or_id: .*chats.jsonl:2: invalid JSON"),
    ("sources", b'{"conversations": []}\n{"conversations": [{"from": "human", "value": "caf\xe9"}]}\n',
     r"data.sources\[0\].path_or_id: .*chats.jsonl:2: not UTF-8 text \(byte 0xe9\)"),
    ("prepare", b'{"conversations": [{"from": "human", "value": "caf\xe9"}]}\n',
     r"data.sources\[0\].path_or_id: .*chats.jsonl:1: not UTF-8 text"),
    ("prepare", b'{"conversation": [{"from": "human", "value": "hi"}]}\n',
     r"data.sources: .*chats.jsonl:1: missing key 'conversations'"),
    ("prepare", b'{"conversations": [{"from": "robot", "value": "hi"}]}\n', r"data.sources: .*chats.jsonl:1"),
]


@pytest.mark.parametrize("stage,content,message", DATA_CASES, ids=[f"{s}-{i}" for i, (s, *_) in enumerate(DATA_CASES)])
def test_bad_data_file_is_one_line_with_file_and_line(stage, content, message, workdir):
    proc, _ = run_stage(stage, workdir, sharegpt(workdir, content))
    assert_one_line(proc, rf"^error: {message}")
    assert not (workdir / "data" / "sft").exists() and not (workdir / "data" / "sources.json").exists()


def test_missing_data_file_stops_every_stage_up_front(workdir):
    proc, _ = run_stage("prepare", workdir, edited(data__sources=[{"type": "sharegpt", "path_or_id": "my_chats.jsonl"}]))
    assert_one_line(proc, r"^error: data.sources\[0\].path_or_id: my_chats.jsonl: no such file or folder")


def test_local_looking_dataset_name_fails_fast(workdir):
    """`path_or_id: my_chats` (no extension, no such file) is taken for a hub id: one line in seconds."""
    proc, seconds = run_stage("prepare", workdir, edited(data__sources=[{"type": "sharegpt", "path_or_id": "my_chats"}]))
    assert_one_line(proc, r"^error: data.sources\[0\].path_or_id: 'my_chats' is neither an existing path nor")
    assert seconds < 60 and not (workdir / "data").exists()


# ---------------------------------------------------------------------------------------------------
# 4. Outputs: strict JSON, no half-written files


def test_metrics_with_nan_are_refused_and_the_old_file_kept(tmp_path):
    """Before: `NaN` (not JSON) was written into metrics files by a run that diverged."""
    f = tmp_path / "metrics.json"
    atomic_write_json(f, {"ppl": {"4096": 12.5}})
    old = f.read_bytes()
    for bad in (float("nan"), float("inf"), [1.0, float("-inf")]):
        with pytest.raises(ValueError, match=r"metrics.json: ppl.4096.* is not a finite number; refusing to write"):
            atomic_write_json(f, {"ppl": {"4096": bad}})
    assert f.read_bytes() == old and json.loads(old) == {"ppl": {"4096": 12.5}}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left
    atomic_write_json(f, {"ppl": None})  # an undefined metric is null
    assert json.loads(f.read_text()) == {"ppl": None}


def test_copy_file_is_independent(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(1 << 16))
    os.chmod(src, 0o444)  # DVC-protected
    copy_file(src, tmp_path / "b.bin")
    b = tmp_path / "b.bin"
    assert b.read_bytes() == src.read_bytes() and b.stat().st_ino != src.stat().st_ino
    with open(b, "r+b") as h:
        h.truncate(10)
    assert src.stat().st_size == 1 << 16


def test_every_model_load_passes_trust_remote_code():
    """A folder with custom code must never make transformers prompt or run it: every load says so explicitly."""
    calls = []
    for f in [*ROOT.glob("longctx/**/*.py"), *ROOT.glob("stages/*.py"), *ROOT.glob("benchmarks/*.py"),
              *ROOT.glob("tools/*.py")]:
        text = f.read_text()
        for m in re.finditer(r"\b(Auto\w+|LlamaForCausalLM)\.from_pretrained\(", text):
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            calls.append((f"{f.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}", text[m.end():i]))
    assert len(calls) >= 8
    missing = [where for where, args in calls if "trust_remote_code" not in args]
    assert not missing, f"from_pretrained without trust_remote_code: {missing}"


# ---------------------------------------------------------------------------------------------------
# 5. Faults that need DVC


def dvc(cwd: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check:
        assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def init_repo(path: Path, cache_type: str) -> None:
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    dvc(path, "init", "-q")
    dvc(path, "config", "cache.type", cache_type)
    dvc(path, "config", "core.analytics", "false")


def project_cache_type() -> str:
    text = (ROOT / ".dvc" / "config").read_text()
    return re.search(r'type\s*=\s*"?([\w,]+)"?', text).group(1)


WRITE_BASE = "import os, random; os.makedirs('base', exist_ok=True); " \
             "open('base/w.bin', 'wb').write(random.Random(0).randbytes(1 << 20))"
EXTEND = "import os; os.makedirs('ext', exist_ok=True); from longctx.io import copy_file; " \
         "copy_file('base/w.bin', 'ext/w.bin')"


@pytest.mark.skipif(not HAS_DVC, reason="dvc not installed")
@pytest.mark.parametrize("cache_type,corrupts", [("hardlink,symlink", True), (project_cache_type(), False)],
                         ids=["before-hardlink", "project-config"])
def test_in_place_write_never_corrupts_the_cache(tmp_path, cache_type, corrupts):
    """Issue 18.1: with hard links, truncating models/base in place truncated the DVC cache object too, and
    `dvc checkout -f` then restored the truncated file. With the project's cache type the write stays local,
    `dvc status` reports the output modified, and `dvc checkout -f` restores the original bytes."""
    init_repo(tmp_path, cache_type)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "base": {"cmd": f'{sys.executable} -c "{WRITE_BASE}"', "outs": ["base"]},
        "extend": {"cmd": f'{sys.executable} -c "{EXTEND}"', "deps": ["base"], "outs": ["ext"]},
    }}))
    dvc(tmp_path, "repro", "-q")
    w = tmp_path / "base" / "w.bin"
    good = hashlib.md5(w.read_bytes()).hexdigest()
    cache_obj = next(p for p in (tmp_path / ".dvc" / "cache").rglob("*") if p.is_file() and p.stat().st_size == 1 << 20
                     and hashlib.md5(p.read_bytes()).hexdigest() == good)
    os.chmod(w, 0o644)  # what a user (or root) writing in place does to a DVC-protected file
    with open(w, "r+b") as f:
        f.truncate(1000)
    assert cache_obj.stat().st_size == (1000 if corrupts else 1 << 20)
    if corrupts:
        return  # the failure reproduced: the cache object is truncated too
    assert "modified" in dvc(tmp_path, "status", "base")  # the corrupted output is detected
    assert (tmp_path / "ext" / "w.bin").stat().st_size == 1 << 20  # the extended copy is intact
    dvc(tmp_path, "checkout", "-f", "base")
    assert hashlib.md5(w.read_bytes()).hexdigest() == good
    assert "up to date" in dvc(tmp_path, "status").lower() or "unchanged" in dvc(tmp_path, "status").lower()


@pytest.mark.skipif(not HAS_DVC, reason="dvc not installed")
@pytest.mark.parametrize("with_sources_stage", [False, True], ids=["before-no-fingerprint", "sources-stage"])
def test_editing_a_local_data_source_reruns_prepare(tmp_path, with_sources_stage):
    """Issue 18.4: a local ShareGPT file named in params was not a DVC dependency: editing it left prepare
    'up to date'. The sources stage fingerprints it into data/sources.json, which prepare depends on."""
    init_repo(tmp_path, "copy")
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})
                     + "\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(edited(data__sources=[
        {"type": "sharegpt", "path_or_id": "chats.jsonl"}]), sort_keys=False))
    real = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stages = {}
    if with_sources_stage:
        src = real["sources"]
        stages["sources"] = {"cmd": " ".join(stage_cmd("sources")), "always_changed": src["always_changed"],
                             "params": src["params"], "outs": src["outs"]}
    # prepare as dvc.yaml declares it, minus the model and code deps; its command just records its input
    deps = [d for d in real["prepare"]["deps"] if d.startswith("data/")] if with_sources_stage else []
    stages["prepare"] = {"cmd": f'{sys.executable} -c "import shutil; shutil.copy(\'chats.jsonl\', \'sft.jsonl\')"',
                         "deps": deps, "params": real["prepare"]["params"], "outs": ["sft.jsonl"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    dvc(tmp_path, "repro", "-q")
    out = dvc(tmp_path, "repro")
    assert "Running stage 'prepare'" not in out  # unchanged sources: prepare does not rerun
    with open(chats, "a") as f:
        f.write(json.dumps({"conversations": [{"from": "human", "value": "more"}]}) + "\n")
    out = dvc(tmp_path, "repro")
    reran = "Running stage 'prepare'" in out
    assert reran == with_sources_stage  # before the fix: the edit went unnoticed
    if with_sources_stage:
        assert (tmp_path / "sft.jsonl").read_bytes() == chats.read_bytes()


def test_evaluate_with_nan_weights_stops_with_one_line(workdir):
    """Before: a NaN perplexity reached atomic_write_json as a ValueError traceback. Now one line, exit 1,
    and no metrics file (an earlier one is left as it was)."""
    from safetensors.torch import load_file, save_file

    from longctx.evaluation.samples import EvalSample, save_samples

    base = workdir / "models" / "base"
    weights = next(base.glob("*.safetensors"))
    sd = load_file(weights)
    sd["model.norm.weight"][0] = float("nan")
    save_file(sd, weights, metadata={"format": "pt"})
    window = [(7 * i) % 128 for i in range(256)]  # one perplexity window of the tiny vocabulary
    save_samples([EvalSample("perplexity", 256, None, 0, window, [], "")], workdir / "data" / "eval" / "samples.jsonl")
    (workdir / "metrics").mkdir()
    earlier = workdir / "metrics" / "eval_base.json"
    earlier.write_text('{"ppl.256": 3.0}\n')
    proc, _ = run_stage("evaluate_base", workdir, {"method": "none", "eval": {"lengths": [256], "passkey": {"enabled": False}}})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn" not in ln]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert lines[-1].startswith("error: evaluate: metrics/eval_base.json: ppl.256") and "not a finite number" in lines[-1], lines
    assert "Traceback" not in proc.stderr
    assert earlier.read_text() == '{"ppl.256": 3.0}\n'
