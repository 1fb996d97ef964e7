"""Fine-tuning: LoRA and full both learn; packing changes nothing; position-id methods flow through."""

import dataclasses
import json
import shutil

import pytest
import torch
from transformers import LlamaForCausalLM

from longctx.methods import build_extension
from longctx.modeling import load_finetuned, make_extended_model
from longctx.params import LoraParams, TrainParams
from longctx.training import finetune
from longctx.training.batching import batch_inputs, method_position_ids, read_sft
from longctx.training.checkpoint import train_fingerprint
from longctx.training.sampler import SampleOrder, micro_batch_slots
from tests.conftest import tiny_llama_config
from tests.test_modeling import base_dir  # noqa: F401  (module fixture: a tiny materialised base model)


def write_sft(path, n=6, length=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    with open(path, "w") as f:
        for _ in range(n):
            ids = torch.randint(3, 128, (length,), generator=g).tolist()
            labels = [-100] * (length // 2) + ids[length // 2:]
            f.write(json.dumps({"input_ids": ids, "labels": labels, "position_ids": list(range(length)),
                                "seq_lens": [length]}) + "\n")


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_finetune_reduces_loss_and_reloads(mode, base_dir, tmp_path):  # noqa: F811
    ext_dir = tmp_path / "ext"
    make_extended_model(base_dir, ext_dir, "yarn", {}, 256)
    sft = tmp_path / "train.jsonl"
    write_sft(sft, n=2)
    tp = TrainParams(steps=25, mode=mode, seq_len=48, lr=1e-2 if mode == "lora" else 1e-3, scheduler="constant",
                     lora=LoraParams(r=8, alpha=16, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"]))
    out = tmp_path / "ft"
    summary = finetune(ext_dir, sft, out, tp, dtype="float32")
    assert summary["loss_last"] < summary["loss_first"] * 0.9
    model = load_finetuned(out, ext_dir, dtype="float32", device="cpu")
    rows = read_sft(sft, 48)
    batch = batch_inputs(rows[:1], build_extension("yarn", {}, 256, 64, 10000.0, 16), 0, "cpu")
    with torch.no_grad():
        loss = model(**batch).loss.item()
    assert loss < summary["loss_first"]
    assert json.loads((out / "finetune.json").read_text())["mode"] == mode


def test_training_curves_are_logged(base_dir, tmp_path):  # noqa: F811
    """dvclive gets one row per optimizer step of loss, learning rate and tokens/s (peak memory on CUDA)."""
    pytest.importorskip("dvclive")
    import csv

    ext_dir = tmp_path / "ext"
    make_extended_model(base_dir, ext_dir, "yarn", {}, 256)
    sft = tmp_path / "train.jsonl"
    write_sft(sft, n=3, length=32)
    losses = []
    tp = TrainParams(steps=3, mode="full", seq_len=32, lr=1e-3, scheduler="linear")
    finetune(ext_dir, sft, tmp_path / "ft", tp, dtype="float32", live_dir=tmp_path / "live",
             checkpoint_dir=tmp_path / "ck", on_step=lambda s, loss: losses.append(loss))
    curves = {}
    for f in (tmp_path / "live" / "plots" / "metrics").glob("*.tsv"):
        with open(f) as fh:
            curves[f.stem] = [float(r[f.stem]) for r in csv.DictReader(fh, delimiter="\t")]
    assert set(curves) >= {"loss", "lr", "tokens_per_s"}
    assert curves["loss"] == pytest.approx(losses, abs=1e-6)
    assert curves["lr"][0] > curves["lr"][-1]  # linear decay
    assert len(curves["tokens_per_s"]) == 3 and all(t > 0 for t in curves["tokens_per_s"])


def test_zero_steps_passes_the_extended_model_through(base_dir, tmp_path):  # noqa: F811
    ext_dir = tmp_path / "ext"
    make_extended_model(base_dir, ext_dir, "pi", {}, 256)
    sft = tmp_path / "train.jsonl"
    write_sft(sft)
    stale = tmp_path / "live" / "plots" / "metrics" / "loss.tsv"  # curves of an earlier run in the same folder
    stale.parent.mkdir(parents=True)
    stale.write_text("step\tloss\n0\t4.2\n")
    (tmp_path / "live" / "metrics.json").write_text('{"loss": 4.2}')
    finetune(ext_dir, sft, tmp_path / "ft", TrainParams(steps=0), live_dir=tmp_path / "live")
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text()) == {"mode": "none", "steps": 0, "method": "pi"}
    # dvc.yaml declares the dvclive outputs: a training-free run leaves them too (empty), or DVC fails the stage
    assert json.loads((tmp_path / "live" / "metrics.json").read_text()) == {}
    assert (tmp_path / "live" / "plots" / "metrics").is_dir() and not stale.exists()
    model = load_finetuned(tmp_path / "ft", ext_dir, dtype="float32", device="cpu")
    assert model.config.rope_parameters["rope_type"] == "linear"


def test_packed_equals_separate(tmp_path):
    """Two samples packed in one row give the same loss as the two rows run separately."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    ext = build_extension("none", {}, 64, 64, 10000.0, 16)
    a = {"input_ids": list(range(3, 23)), "labels": [-100] * 5 + list(range(8, 23)), "position_ids": list(range(20)),
         "seq_lens": [20]}
    b = {"input_ids": list(range(40, 70)), "labels": [-100] * 10 + list(range(50, 70)),
         "position_ids": list(range(30)), "seq_lens": [30]}
    packed = {"input_ids": a["input_ids"] + b["input_ids"], "labels": a["labels"] + b["labels"],
              "position_ids": a["position_ids"] + b["position_ids"], "seq_lens": [20, 30]}
    with torch.no_grad():
        logits_packed = model(**{k: v for k, v in batch_inputs([packed], ext, 0, "cpu").items() if k != "labels"}).logits
        logits_a = model(input_ids=torch.tensor([a["input_ids"]])).logits
        logits_b = model(input_ids=torch.tensor([b["input_ids"]])).logits
    assert torch.allclose(logits_packed[0, :20], logits_a[0], atol=1e-5)
    assert torch.allclose(logits_packed[0, 20:], logits_b[0], atol=1e-5)


@pytest.mark.parametrize("method", ["cream", "pose", "randpos"])
def test_position_id_methods_flow_through_packing(method, tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    ext = build_extension(method, {}, 256, 64, 10000.0, 16)
    row = {"input_ids": list(range(3, 63)), "labels": list(range(3, 63)), "position_ids": list(range(30)) * 2,
           "seq_lens": [30, 30]}
    batch = batch_inputs([row], ext, 5, "cpu")
    pos = batch["position_ids"][0]
    for seg in (pos[:30], pos[30:]):
        assert seg[0] == 0 and (seg.diff() > 0).all() and seg[-1] < 30 * 4
    assert pos[:30].max() > 29 or pos[30:].max() > 29  # positions reach past the short window
    mask = batch["attention_mask"][0, 0]
    assert not mask[30:, :30].any()  # no attention across packed samples
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        alone = model(input_ids=torch.tensor([row["input_ids"][30:]]), position_ids=pos[30:][None],
                      attention_mask=torch.ones(1, 30, dtype=torch.long)).logits
    assert torch.allclose(out[0, 30:], alone[0], atol=1e-5)
    # Same seed -> same ids; the scheme is reproducible.
    assert method_position_ids(ext, [30, 30], 5) == method_position_ids(ext, [30, 30], 5)


# ------------------------------------------------------------------------------------------------
# Checkpoint and resume
# ------------------------------------------------------------------------------------------------

def _tiny_run_setup(base_dir, tmp_path, method="yarn", n=6):  # noqa: F811
    ext_dir = tmp_path / "ext"
    make_extended_model(base_dir, ext_dir, method, {}, 256)
    sft = tmp_path / "train.jsonl"
    write_sft(sft, n=n, length=32)
    return ext_dir, sft


def interrupt_after(step_k, ext_dir, sft, out, tp, ck, losses=None):
    """finetune with a KeyboardInterrupt at the boundary after step ``step_k`` (what Ctrl-C does there)."""
    def on_step(step, loss):
        if losses is not None:
            losses.append(loss)
        if step == step_k:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(ext_dir, sft, out, tp, dtype="float32", checkpoint_dir=ck, on_step=on_step)


def _weights(out, ext_dir):
    model = load_finetuned(out, ext_dir, dtype="float32", device="cpu")
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_interrupted_and_resumed_equals_uninterrupted(mode, base_dir, tmp_path):  # noqa: F811
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    # LoRA dropout > 0 makes the run depend on the restored RNG state; batch 2 crosses an epoch boundary.
    tp = TrainParams(steps=6, mode=mode, seq_len=32, batch_size=2, lr=1e-3, scheduler="cosine", warmup_steps=1,
                     checkpoint_every=2,
                     lora=LoraParams(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"]))
    ref_losses = []
    ref = finetune(ext_dir, sft, tmp_path / "ref", tp, dtype="float32", checkpoint_dir=tmp_path / "ck_ref",
                   on_step=lambda s, loss: ref_losses.append(loss))
    assert not list((tmp_path / "ck_ref").iterdir())  # scratch checkpoints are removed once the output is written

    ck = tmp_path / "ck"
    losses = []
    interrupt_after(3, ext_dir, sft, tmp_path / "out", tp, ck, losses)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in ck.iterdir()) == ["step_2", "step_3"]  # scheduled at 2, Ctrl-C at 3, keep 2
    state = json.loads((ck / "step_3" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["cursor"] == 3 * 2 and len(state["losses"]) == 3
    from safetensors.torch import load_file

    stored = load_file(ck / "step_3" / "trainable.safetensors")
    if mode == "lora":  # adapter only, not the frozen base weights
        assert stored and all("lora_" in k for k in stored)
    else:
        assert any("embed_tokens" in k for k in stored)
    assert not list((ck / "step_3").glob("*.pkl")) and not list((ck / "step_3").glob("*.bin"))  # no pickle

    resumed_steps = []
    summary = finetune(ext_dir, sft, tmp_path / "out", tp, dtype="float32", checkpoint_dir=ck,
                       on_step=lambda s, loss: (resumed_steps.append(s), losses.append(loss)))
    assert resumed_steps == [4, 5, 6]
    assert losses == pytest.approx(ref_losses, abs=1e-6)
    assert summary == ref
    a, b = _weights(tmp_path / "ref", ext_dir), _weights(tmp_path / "out", ext_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_incompatible_checkpoint_is_not_resumed(base_dir, tmp_path):  # noqa: F811
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    tp = TrainParams(steps=3, mode="lora", seq_len=32, checkpoint_every=1,
                     lora=LoraParams(r=4, alpha=8, target_modules=["q_proj"]))
    ck = tmp_path / "ck"
    interrupt_after(2, ext_dir, sft, tmp_path / "out", tp, ck)
    assert [p.name for p in sorted(ck.iterdir())] == ["step_1", "step_2"]
    steps = []
    tp2 = dataclasses.replace(tp, lr=2e-4)  # other params: the old checkpoints mean nothing
    finetune(ext_dir, sft, tmp_path / "out", tp2, dtype="float32", checkpoint_dir=ck,
             on_step=lambda s, loss: steps.append(s))
    assert steps == [1, 2, 3]
    # checkpoint_every / keep_checkpoints do not change the computation: same fingerprint.
    fp = train_fingerprint(tp, "float32", ext_dir, sft, 1)
    assert fp == train_fingerprint(dataclasses.replace(tp, checkpoint_every=5, keep_checkpoints=3), "float32",
                                   ext_dir, sft, 1)
    assert fp != train_fingerprint(tp, "float32", ext_dir, sft, 2)


def test_micro_batch_slots_same_global_batch_for_any_split():
    def global_batch(step, micro, accum, nproc):
        return sorted(s for a in range(accum) for p in range(nproc)
                      for s in micro_batch_slots(step, a, p, micro, accum, nproc))

    for step in range(3):
        want = list(range(step * 4, step * 4 + 4))
        assert global_batch(step, 4, 1, 1) == want
        assert global_batch(step, 1, 4, 1) == want
        assert global_batch(step, 1, 1, 4) == want
        assert global_batch(step, 2, 1, 2) == want
        assert global_batch(step, 1, 2, 2) == want
    order = SampleOrder(5, 0)
    assert sorted(order(s) for s in range(5)) == list(range(5))
    assert sorted(order(s) for s in range(5, 10)) == list(range(5))


# ------------------------------------------------------------------------------------------------
# Two processes (gloo, CPU) under accelerate launch
# ------------------------------------------------------------------------------------------------

RUNNER = '''
import json, sys
from pathlib import Path
from longctx.params import build, TrainParams
from longctx.training import finetune

ext_dir, sft, out, ck, tp_json, result, stop_at = sys.argv[1:8]
tp = build(TrainParams, json.loads(tp_json), "train")
losses = []

def on_step(step, loss):
    losses.append(loss)
    if step == int(stop_at):  # Ctrl-C at this step boundary, on every process
        raise KeyboardInterrupt

try:
    finetune(Path(ext_dir), Path(sft), Path(out), tp, dtype="float32", checkpoint_dir=Path(ck), on_step=on_step)
    interrupted = False
except KeyboardInterrupt:
    interrupted = True
from accelerate import PartialState
if PartialState().is_main_process:
    Path(result).write_text(json.dumps({"losses": losses, "num_processes": PartialState().num_processes,
                                        "interrupted": interrupted}))
'''


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, name, ext_dir, sft, tp: dict, config=None, stop_at=0):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    result = tmp_path / f"{name}.json"
    args = [str(ext_dir), str(sft), str(tmp_path / name), str(tmp_path / f"ck_{name}"), json.dumps(tp), str(result),
            str(stop_at)]
    if config:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(root / config),
               "--main_process_port", str(_free_port()), str(script), *args]
    else:
        cmd = [sys.executable, str(script), *args]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(result.read_text())


def test_two_processes_match_one(base_dir, tmp_path):  # noqa: F811
    """batch_size 1 x 2 processes (gloo) = grad_accum 2 x 1 process: same losses, same weights."""
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    common = {"steps": 3, "mode": "full", "seq_len": 32, "lr": 1e-3, "scheduler": "constant", "max_grad_norm": 1.0}
    two = _launch(tmp_path, "two", ext_dir, sft, {**common, "batch_size": 1, "grad_accum": 1},
                  config="configs/accelerate/cpu_2proc.yaml")
    one = _launch(tmp_path, "one", ext_dir, sft, {**common, "batch_size": 1, "grad_accum": 2})
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    a, b = _weights(tmp_path / "two", ext_dir), _weights(tmp_path / "one", ext_dir)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_two_processes_interrupted_and_resumed_equals_uninterrupted(base_dir, tmp_path):  # noqa: F811
    """Under DDP (gloo) a checkpoint holds every process's RNG (LoRA dropout differs per process) and the
    resumed run ends where an uninterrupted one does."""
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    tp = {"steps": 4, "mode": "lora", "seq_len": 32, "lr": 1e-3, "scheduler": "cosine", "checkpoint_every": 2,
          "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}}
    cfg = "configs/accelerate/cpu_2proc.yaml"
    ref = _launch(tmp_path, "ref", ext_dir, sft, tp, config=cfg)
    first = _launch(tmp_path, "two", ext_dir, sft, tp, config=cfg, stop_at=3)
    ck = tmp_path / "ck_two"
    assert first["interrupted"] and sorted(p.name for p in ck.iterdir()) == ["step_2", "step_3"]
    assert sorted(p.name for p in (ck / "step_3").glob("rng_*")) == ["rng_0.safetensors", "rng_1.safetensors"]
    second = _launch(tmp_path, "two", ext_dir, sft, tp, config=cfg)
    assert not second["interrupted"] and second["num_processes"] == 2
    assert first["losses"] + second["losses"] == pytest.approx(ref["losses"], abs=1e-6)
    a, b = _weights(tmp_path / "ref", ext_dir), _weights(tmp_path / "two", ext_dir)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


# ------------------------------------------------------------------------------------------------
# Accelerate configs
# ------------------------------------------------------------------------------------------------

def test_accelerate_configs_parse():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    folder = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    want = {"single_gpu": DistributedType.NO, "ddp": DistributedType.MULTI_GPU, "fsdp2": DistributedType.FSDP,
            "multi_node": DistributedType.MULTI_GPU, "cpu_2proc": DistributedType.MULTI_GPU}
    assert {p.stem for p in folder.glob("*.yaml")} == set(want)
    for name, kind in want.items():
        cfg = load_config_from_file(str(folder / f"{name}.yaml"))
        assert cfg.distributed_type == kind, name
    fsdp = load_config_from_file(str(folder / "fsdp2.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # _no_split_modules
    assert load_config_from_file(str(folder / "fsdp2.yaml")).mixed_precision == "bf16"
    node = load_config_from_file(str(folder / "multi_node.yaml"))
    assert node.num_machines > 1 and node.main_process_ip and node.main_process_port
    assert load_config_from_file(str(folder / "cpu_2proc.yaml")).num_processes == 2


# ------------------------------------------------------------------------------------------------
# Memory / speed options
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_ce_equals_model_loss(with_bias):
    from longctx.training.loss import LossFn, fused_causal_lm_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=False)).train()
    ids = torch.randint(3, 128, (2, 40))
    labels = ids.clone()
    labels[0, :15] = -100
    labels[1, 30:] = -100
    batch = {"input_ids": ids, "labels": labels, "use_cache": False}
    ref = model(**batch).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    fused = LossFn(model, fused=True, chunk_size=7)(model, batch)  # chunks smaller than the label count
    fused.backward()
    assert abs(fused.item() - ref.item()) < 1e-5
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], atol=1e-5), n
    if with_bias:  # the function alone, with a bias, against plain cross-entropy
        hidden, weight, bias = torch.randn(2, 40, 64), torch.randn(128, 64), torch.randn(128)
        logits = torch.nn.functional.linear(hidden, weight, bias)
        want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 128), labels[:, 1:].reshape(-1))
        got = fused_causal_lm_loss(hidden, weight, labels, bias, chunk_size=5)
        assert abs(got.item() - want.item()) < 1e-5


@pytest.mark.parametrize("checkpointing", ["full", "selective"])
def test_memory_options_run_and_match(base_dir, tmp_path, checkpointing):  # noqa: F811
    """gradient checkpointing (full or selective) + fused_ce + another attention kernel + a preferred
    SDPA backend train to the same losses."""
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    base = TrainParams(steps=2, mode="lora", seq_len=32, lr=1e-3, lora=LoraParams(r=4, alpha=8,
                                                                                  target_modules=["q_proj", "v_proj"]))
    runs = {}
    for name, tp in {"plain": base,
                     "options": dataclasses.replace(base, gradient_checkpointing=checkpointing, fused_ce=True,
                                                    attn_implementation="eager", sdpa_backend="math")}.items():
        losses = []
        finetune(ext_dir, sft, tmp_path / name, tp, dtype="float32", checkpoint_dir=tmp_path / f"ck_{name}",
                 on_step=lambda s, loss: losses.append(loss))
        runs[name] = losses
    assert runs["options"] == pytest.approx(runs["plain"], abs=1e-5)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("gcc") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.parametrize("checkpointing", ["none", "full"])
def test_compiled_layers_train_to_the_same_losses(base_dir, tmp_path, checkpointing):  # noqa: F811
    ext_dir, sft = _tiny_run_setup(base_dir, tmp_path)
    base = TrainParams(steps=2, mode="full", seq_len=32, lr=1e-3, gradient_checkpointing=checkpointing)
    runs = {}
    for name, tp in {"eager": base, "compiled": dataclasses.replace(base, compile=True)}.items():
        losses = []
        finetune(ext_dir, sft, tmp_path / name, tp, dtype="float32", checkpoint_dir=tmp_path / f"ck_{name}",
                 on_step=lambda s, loss: losses.append(loss))
        runs[name] = losses
    assert runs["compiled"] == pytest.approx(runs["eager"], abs=1e-4)


def test_train_option_validation():
    from longctx.params import ParamsError, build

    with pytest.raises(ParamsError, match="train.attn_implementation"):
        build(TrainParams, {"attn_implementation": "xformers"}, "train")
    with pytest.raises(ParamsError, match="train.compile: not with gradient_checkpointing: selective"):
        build(TrainParams, {"compile": True, "gradient_checkpointing": "selective"}, "train")
    with pytest.raises(ParamsError, match="train.keep_checkpoints"):
        build(TrainParams, {"keep_checkpoints": 0}, "train")
    tp = build(TrainParams, {"fused_ce": "true", "attn_implementation": "flex_attention", "checkpoint_every": 5},
               "train")
    assert tp.fused_ce is True and tp.attn_implementation == "flex_attention" and tp.checkpoint_every == 5


# ------------------------------------------------------------------------------------------------
# Max-length finder
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [1024, 5000, 8192, 70000, 10**9])
def test_find_max_length_bisects_to_the_threshold(limit):
    from longctx.maxlen import find_max_length

    cleaned, tried = [], []

    def fake_step(n):
        tried.append(n)
        if n > limit:
            raise torch.OutOfMemoryError(f"fake: {n} > {limit}")

    out = find_max_length(fake_step, start=1024, max_length=1 << 17, granularity=1024,
                          cleanup=lambda: cleaned.append(1), log=None)
    assert out["max_length"] == min(limit, 1 << 17) // 1024 * 1024
    assert len(cleaned) == len(tried) == len(out["tries"])  # memory freed after every try
    assert tried[:2] == [1024, 2048]
    assert len(tried) <= 2 * 17


def test_find_max_length_edge_cases():
    from longctx.maxlen import find_max_length, is_oom

    assert find_max_length(lambda n: (_ for _ in ()).throw(torch.OutOfMemoryError("x")), log=None,
                           cleanup=lambda: None)["max_length"] == 0
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_oom(ValueError("out of memory"))
    with pytest.raises(ValueError, match="boom"):  # other errors are not swallowed
        find_max_length(lambda n: (_ for _ in ()).throw(ValueError("boom")), log=None, cleanup=lambda: None)


def test_build_step_runs_on_cpu(base_dir, tmp_path):  # noqa: F811
    from longctx.maxlen import build_step, find_max_length

    ext_dir, _ = _tiny_run_setup(base_dir, tmp_path, method="pose")
    tp = TrainParams(mode="lora", fused_ce=True, gradient_checkpointing=True,
                     lora=LoraParams(r=4, alpha=8, target_modules=["q_proj"]))
    step = build_step(ext_dir, tp, dtype="float32", device="cpu")
    assert step(64) > 0
    assert build_step(ext_dir, tp, dtype="float32", device="cpu", eval_only=True)(64) > 0
    # A real step under the search, with a fake memory limit.
    def limited(n):
        if n > 96:
            raise torch.OutOfMemoryError("fake")
        step(n)

    assert find_max_length(limited, start=32, max_length=256, granularity=16, log=None)["max_length"] == 96


# ------------------------------------------------------------------------------------------------
# Benchmark script (GPU only): imports, and its FLOP formula
# ------------------------------------------------------------------------------------------------

def test_train_throughput_benchmark_formula():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # 6*N*T + 6*L*h*T^2 by hand: N=1e6, L=2, h=64, T=1000 -> 6e9 + 768e6
    assert bench.train_flops_per_step(10**6, 2, 64, 1000) == 6_768_000_000
    # SmolLM2-135M at 8k: 6*106.2M*8192 + 6*30*576*8192^2
    assert bench.train_flops_per_step(106_168_896, 30, 576, 8192) == pytest.approx(1.2176e13, rel=1e-3)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())  # tied embeddings: 128*64 counted zero times
    total = sum(p.numel() for p in model.parameters())
    assert bench.non_embedding_params(model) == total - 128 * 64
