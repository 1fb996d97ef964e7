"""Memory for very long sequences: kernels.tile_mlp (each MLP over checkpointed sequence chunks) and
kernels.offload_checkpoints (checkpointed layer inputs in host memory), and their train keys. Every check
compares against the same tiny random Llama without the feature."""

import functools

import pytest
import torch

from longctx.kernels import checkpointing_kwargs, keep_activations, offload_checkpoints, tile_mlp
from tests.conftest import tiny_llama_config

LAYERS, BATCH, SEQ, CHUNK, HIDDEN = 4, 2, 40, 16, 64  # 40 tokens = chunks of 16, 16 and 8


def _ids(seq=SEQ):
    return torch.randint(0, 128, (BATCH, seq), generator=torch.Generator().manual_seed(3))


def _model(mode="none"):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(num_hidden_layers=LAYERS)).train()
    ckpt = checkpointing_kwargs(mode)
    if ckpt is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt)
    return model


def _lora(model):
    """PEFT LoRA on attention and MLP projections, B randomised (seeded) so every adapter gradient is nonzero."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "gate_proj", "up_proj", "down_proj"]))
    _randomise_lora_b(model)
    return model


def _randomise_lora_b(model):
    gen = torch.Generator().manual_seed(1)
    for name, p in sorted(model.named_parameters()):
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def _layers(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.layers


def _step(model, ids):
    """Loss, parameter gradients, and the sequence lengths every gate_proj saw (how the MLP was tiled) in the
    forward pass and in the backward pass (recomputes)."""
    seen = []
    hooks = [layer.mlp.gate_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-2]))
             for layer in _layers(model)]
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    forward = list(seen)
    loss.backward()
    for h in hooks:
        h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads, (forward, seen[len(forward):])


def _assert_same(result, ref):
    loss, grads, _ = result
    ref_loss, ref_grads, _ = ref
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys() and ref_grads
    for name, g in ref_grads.items():
        assert g.abs().max() > 0, name  # a gradient that is there to compare
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-5 * g.abs().max().item(), msg=name)


# --------------------------------------------------------------------------- tile_mlp


@pytest.mark.parametrize("mode", ["none", "full", "selective"])
@pytest.mark.parametrize("lora", [False, True], ids=["full_ft", "lora"])
def test_tile_mlp_same_loss_and_gradients(mode, lora):
    ids = _ids()
    ref_model = _model("none")
    ref = _step(_lora(ref_model) if lora else ref_model, ids)
    assert ref[2][0] == [SEQ] * LAYERS

    model = _model(mode)
    assert tile_mlp(model, CHUNK) == LAYERS  # before LoRA wrapping, as trainable_model does
    model = _lora(model) if lora else model
    result = _step(model, ids)
    forward, backward = result[2]
    assert forward == [16, 16, 8] * LAYERS
    assert backward and set(backward) <= {16, 8}  # recomputes (how many: PyTorch's early stop) run chunks too
    _assert_same(result, ref)


def test_tile_mlp_after_peft_wrapping_and_retiling():
    ids = _ids()
    ref = _step(_lora(_model("full")), ids)
    model = _lora(_model("full"))
    assert tile_mlp(model, 8) == LAYERS  # through the PEFT wrapper, around the LoRA-wrapped projections
    assert tile_mlp(model, CHUNK) == LAYERS  # re-tiles the original forward, does not nest
    result = _step(model, ids)
    assert result[2][0] == [16, 16, 8] * LAYERS
    _assert_same(result, ref)


def test_tile_mlp_short_sequence_and_no_grad_forward():
    model, ref_model = _model(), _model()
    tile_mlp(model, CHUNK)
    short = _ids(CHUNK)  # not longer than a chunk: the plain forward
    loss, grads, (forward, backward) = _step(model, short)
    ref_loss, ref_grads, _ = _step(ref_model, short)
    assert forward == [CHUNK] * LAYERS and backward == [] and loss == ref_loss
    assert all(torch.equal(grads[n], g) for n, g in ref_grads.items())

    ids = _ids()
    seen = []
    hook = model.model.layers[0].mlp.gate_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-2]))
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
        ref_logits = ref_model(input_ids=ids, use_cache=False).logits
    hook.remove()
    assert seen == [16, 16, 8]  # a plain loop over the chunks
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)


def test_tile_mlp_bad_arguments():
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1"):
        tile_mlp(_model(), 0)
    with pytest.raises(RuntimeError, match="tile_mlp: no decoder layers found in Linear"):
        tile_mlp(torch.nn.Linear(2, 2), 16)


# --------------------------------------------------------------------------- offload_checkpoints


@pytest.fixture
def packed(monkeypatch):
    """Spy on save_on_cpu (as kernels looks it up, torch.autograd.graph.save_on_cpu): the tensors its pack hook
    gets in the forward pass, and how many its unpack hook gives back."""
    record = {"packed": [], "unpacked": 0}
    base = torch.autograd.graph.save_on_cpu

    class Spy(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pack, unpack = self.pack_hook, self.unpack_hook

            def spy_pack(t):
                record["packed"].append(t.detach().clone())
                return pack(t)

            def spy_unpack(p):
                record["unpacked"] += 1
                return unpack(p)

            self.pack_hook, self.unpack_hook = spy_pack, spy_unpack

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Spy)
    return record


def _layer_inputs(model):
    """Forward pre-hooks recording each decoder layer's hidden_states input (first forward only)."""
    inputs = {}

    def record(i, module, args):
        inputs.setdefault(i, args[0].detach().clone())  # returns None: the input stays as it is

    hooks = [layer.register_forward_pre_hook(functools.partial(record, i)) for i, layer in enumerate(_layers(model))]
    return inputs, hooks


# compiled layers (train.compile) only with full checkpointing: selective is not allowed with compile
@pytest.mark.parametrize("mode, compiled", [("full", False), ("selective", False), ("full", True)],
                         ids=["full", "selective", "full-compiled"])
def test_offload_checkpoints_same_gradients_and_first_layers_inputs_offloaded(mode, compiled, packed):
    ids = _ids()
    ref = _step(_model(mode), ids)
    assert packed["packed"] == []

    model = _model(mode)
    if compiled:  # as trainable_model: compile_layers before checkpointing
        for layer in model.model.layers:
            layer.compile()
    assert offload_checkpoints(model, 2) == 2
    inputs, hooks = _layer_inputs(model)
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    for h in hooks:
        h.remove()
    # exactly the inputs of layers 0 and 1 went to host memory, nothing of layers 2 and 3 (nor cos/sin, masks)
    assert [tuple(t.shape) for t in packed["packed"]] == [(BATCH, SEQ, HIDDEN)] * 2
    assert torch.equal(packed["packed"][0], inputs[0]) and torch.equal(packed["packed"][1], inputs[1])
    assert packed["unpacked"] == 0
    loss.backward()
    assert packed["unpacked"] == 2  # brought back for the two layers' recompute
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    _assert_same((loss.item(), grads, None), ref)


def test_offload_checkpoints_errors():
    with pytest.raises(RuntimeError, match="decoder layer 0 is not checkpointed"):
        offload_checkpoints(_model("none"), 1)
    model = _model("full")
    keep_activations(model, 2)  # layers 2 and 3 plain
    assert offload_checkpoints(model, 2) == 2
    with pytest.raises(RuntimeError, match="decoder layer 2 is not checkpointed"):
        offload_checkpoints(model, 3)
    with pytest.raises(ValueError, match="layers must be >= 0"):
        offload_checkpoints(model, -1)
    with pytest.raises(ValueError, match="5 exceeds the model's 4 decoder layers"):
        offload_checkpoints(model, 5)
    with pytest.raises(RuntimeError, match="offload_checkpoints: no decoder layers"):
        offload_checkpoints(torch.nn.Linear(2, 2), 1)


# --------------------------------------------------------------------------- train keys (trainable_model)


def test_train_keys_parse_and_bad_combinations():
    from longctx.params import ParamsError, TrainParams, build

    tp = build(TrainParams, {}, "train")
    assert tp.mlp_chunk_tokens == 0 and tp.offload_checkpoints == 0
    tp = build(TrainParams, {"mlp_chunk_tokens": 8192, "offload_checkpoints": 16,
                             "gradient_checkpointing": "selective"}, "train")
    assert (tp.mlp_chunk_tokens, tp.offload_checkpoints) == (8192, 16)
    assert build(TrainParams, {"mlp_chunk_tokens": 64}, "train").mlp_chunk_tokens == 64  # no checkpointing needed
    assert build(TrainParams, {"offload_checkpoints": 2, "gradient_checkpointing": "full", "compile": True},
                 "train").offload_checkpoints == 2
    with pytest.raises(ParamsError, match="train.mlp_chunk_tokens"):
        build(TrainParams, {"mlp_chunk_tokens": -1}, "train")
    with pytest.raises(ParamsError, match="train.offload_checkpoints"):
        build(TrainParams, {"offload_checkpoints": -1, "gradient_checkpointing": "full"}, "train")
    with pytest.raises(ParamsError, match="train.offload_checkpoints: 2 needs gradient_checkpointing full or select"):
        build(TrainParams, {"offload_checkpoints": 2}, "train")
    with pytest.raises(ParamsError, match="train.mlp_chunk_tokens: 64 not with compile: true"):
        build(TrainParams, {"mlp_chunk_tokens": 64, "compile": True}, "train")


def _trainable(**train):
    from longctx.params import TrainParams, build
    from longctx.training.trainable import trainable_model

    lora = {"r": 4, "target_modules": ["q_proj", "gate_proj", "down_proj"]}
    tp = build(TrainParams, {"lora": lora, **train}, "train")
    model, _, _ = trainable_model(_model(), tp)
    _randomise_lora_b(model)
    return model


def test_trainable_model_alst_setup_same_gradients(packed):
    """LoRA with selective checkpointing, the tiled MLP, 2 offloaded and 1 plain layer: the plain LoRA model's
    loss and gradients."""
    ids = _ids()
    ref = _step(_trainable(), ids)
    model = _trainable(gradient_checkpointing="selective", mlp_chunk_tokens=CHUNK, offload_checkpoints=2,
                       keep_activations=1)
    assert [layer.gradient_checkpointing for layer in _layers(model)] == [True, True, True, False]
    result = _step(model, ids)
    assert result[2][0] == [16, 16, 8] * LAYERS
    assert [tuple(t.shape) for t in packed["packed"]] == [(BATCH, SEQ, HIDDEN)] * 2
    _assert_same(result, ref)


def test_trainable_model_offload_plus_plain_layers_above_layer_count_names_the_key():
    with pytest.raises(ValueError, match=r"train.offload_checkpoints: 3 offloaded \+ 2 plain \(keep_activations\) "
                                         r"exceed the model's 4 decoder layers; allowed 0..2"):
        _trainable(gradient_checkpointing="full", offload_checkpoints=3, keep_activations=2)
