"""Fine-tuning: LoRA and full both learn; packing changes nothing; position-id methods flow through."""

import json

import pytest
import torch
from transformers import LlamaForCausalLM

from longctx.methods import build_extension
from longctx.modeling import make_extended_model
from longctx.params import LoraParams, TrainParams
from longctx.train import batch_inputs, finetune, load_finetuned, method_position_ids, read_sft
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


def test_zero_steps_passes_the_extended_model_through(base_dir, tmp_path):  # noqa: F811
    ext_dir = tmp_path / "ext"
    make_extended_model(base_dir, ext_dir, "pi", {}, 256)
    sft = tmp_path / "train.jsonl"
    write_sft(sft)
    finetune(ext_dir, sft, tmp_path / "ft", TrainParams(steps=0))
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text()) == {"mode": "none", "steps": 0, "method": "pi"}
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
