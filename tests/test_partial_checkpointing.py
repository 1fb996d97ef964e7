"""kernels.keep_activations: the last n decoder layers skip checkpointing; gradients are unchanged."""

import pytest
import torch

from longctx.kernels import checkpointing_kwargs, keep_activations
from tests.conftest import tiny_llama_config


def _saved_bytes_and_grads(model, ids):
    """Bytes autograd saves during the forward pass (outside checkpointed regions), and the gradients."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return sum(saved), grads


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_plain_layers_keep_activations_same_gradients(mode):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(num_hidden_layers=4)).train()
    ids = torch.randint(0, 128, (1, 48))
    _, ref = _saved_bytes_and_grads(model, ids)  # no checkpointing
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs(mode))
    all_ckpt, grads_all = _saved_bytes_and_grads(model, ids)
    assert keep_activations(model, 2) == 2
    flags = [layer.gradient_checkpointing for layer in model.model.layers]
    assert flags == [True, True, False, False]
    partial, grads_partial = _saved_bytes_and_grads(model, ids)
    assert partial > all_ckpt  # the two plain layers now keep their activations
    for name, g in ref.items():
        torch.testing.assert_close(grads_all[name], g, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads_partial[name], g, rtol=1e-5, atol=1e-6)


def test_keep_activations_under_lora_and_bad_counts():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config())
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs("full"))
    lm = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert keep_activations(lm, 1) == 1
    assert [layer.gradient_checkpointing for layer in model.model.layers] == [True, False]
    with pytest.raises(ValueError, match="exceeds"):
        keep_activations(lm, 3)
    with pytest.raises(ValueError, match=">= 0"):
        keep_activations(lm, -1)


# --------------------------------------------------------------------------- train.keep_activations (finetune stage)


def test_train_keep_activations_key_parses_and_is_validated():
    from longctx.params import ParamsError, TrainParams, build

    assert build(TrainParams, {}, "train").keep_activations == 0
    tp = build(TrainParams, {"keep_activations": 3, "gradient_checkpointing": "selective"}, "train")
    assert tp.keep_activations == 3
    with pytest.raises(ParamsError, match="train.keep_activations"):
        build(TrainParams, {"keep_activations": -1, "gradient_checkpointing": "full"}, "train")
    with pytest.raises(ParamsError, match="train.keep_activations: 2 needs gradient_checkpointing"):
        build(TrainParams, {"keep_activations": 2}, "train")


def _lora_step(keep: int, mode: str = "selective"):
    """One LoRA backward through ``trainable_model`` (the finetune stage's setup) on a 4-layer tiny Llama."""
    from transformers import LlamaForCausalLM

    from longctx.params import TrainParams, build
    from longctx.training.trainable import trainable_model

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(num_hidden_layers=4))
    tp = build(TrainParams, {"gradient_checkpointing": mode, "keep_activations": keep,
                             "lora": {"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]}}, "train")
    model, params, _ = trainable_model(model, tp)
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(3))
    saved, grads = _saved_bytes_and_grads(model, ids)
    return model, saved, grads


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_train_keep_activations_same_gradients_through_trainable_model(mode):
    _, saved0, grads0 = _lora_step(0, mode)
    model, saved3, grads3 = _lora_step(3, mode)
    layers = model.get_base_model().model.layers
    assert [layer.gradient_checkpointing for layer in layers] == [True, False, False, False]
    assert saved3 > saved0  # three layers keep their activations now
    assert grads0.keys() == grads3.keys() and grads0
    for name, g in grads0.items():
        torch.testing.assert_close(grads3[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_train_keep_activations_above_layer_count_names_the_key():
    with pytest.raises(ValueError, match=r"train.keep_activations: 5 exceeds the model's 4 decoder layers; allowed 0..4"):
        _lora_step(5)


# --------------------------------------------------------------------------- LoRA over bf16 frozen weights


def test_load_dtype_bf16_frozen_weights_only_for_lora_under_autocast():
    from longctx.params import TrainParams, build
    from longctx.training.trainable import load_dtype

    lora, full = build(TrainParams, {}, "train"), build(TrainParams, {"mode": "full"}, "train")
    assert load_dtype(lora, "auto", autocast_bf16=True) == "bfloat16"
    assert load_dtype(full, "auto", autocast_bf16=True) == "float32"  # full: float32 master weights
    assert load_dtype(lora, "auto", autocast_bf16=False) == "float32"  # CPU: unchanged
    assert load_dtype(lora, "bfloat16", autocast_bf16=False) == "bfloat16"  # model.dtype set: as asked


def test_lora_over_bf16_weights_under_autocast_trains_in_float32_adapters():
    """bf16 frozen weights, float32 adapters and lora.trainable copies, no float32 input cast; the loss and the
    adapter gradients of one autocast step match the float32 model's within bf16 error."""
    from transformers import LlamaForCausalLM

    from longctx.params import TrainParams, build
    from longctx.training.trainable import trainable_model

    tp = build(TrainParams, {"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"], "trainable": ["lm_head"]}},
               "train")
    ids = torch.randint(0, 128, (1, 32), generator=torch.Generator().manual_seed(4))
    results = []
    for dtype, autocast in ((torch.float32, False), (torch.bfloat16, True)):
        torch.manual_seed(0)
        model = LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=False)).to(dtype)
        model, params, _ = trainable_model(model, tp, autocast_bf16=autocast)
        torch.manual_seed(1)
        for p in params:  # LoRA B starts at zero; give it values so the adapter gradients are not trivial
            if p.ndim == 2 and not p.any():
                p.data.normal_(0, 0.05)
        assert {p.dtype for p in params} == {torch.float32}
        if autocast:
            frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
            assert frozen == {torch.bfloat16}
            assert all(m.cast_input_dtype_enabled is False for m in model.modules() if hasattr(m, "lora_A"))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        results.append((loss.item(), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}))
    (loss32, g32), (loss16, g16) = results
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    assert g32.keys() == g16.keys()
    for name, g in g32.items():
        torch.testing.assert_close(g16[name], g, rtol=0.1, atol=0.1 * g.abs().max().item(), msg=name)
