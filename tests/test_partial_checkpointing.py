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
