"""Kernel switches of the training step: checkpointing modes, SDPA backend preference, Liger guards."""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaForCausalLM

from longctx.kernels import apply_liger, checkpointing_kwargs, sdpa_backend
from longctx.params import ParamsError, TrainParams, build
from tests.conftest import tiny_llama_config


class _OpCounter(TorchDispatchMode):
    """Counts every aten op that runs inside the block."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func)] = self.calls.get(str(func), 0) + 1
        return func(*args, **(kwargs or {}))


CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (run on the GPU host)")


def _grads_and_backward_ops(mode: str, attn: str = "sdpa", device: str = "cpu", liger: bool = False):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(attn_implementation=attn, num_hidden_layers=3)).to(device)
    if liger:
        apply_liger(model)
    kwargs = checkpointing_kwargs(mode)
    if kwargs is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()
    ids = torch.randint(0, 128, (2, 48), generator=torch.Generator().manual_seed(1)).to(device)
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    counter = _OpCounter()
    with counter if attn != "flex_attention" else contextlib.nullcontext():  # no dispatch mode sees a HOP
        loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}, counter.calls


def _attention_forwards(calls: dict) -> int:
    return sum(v for k, v in calls.items() if "attention" in k and "backward" not in k)


def test_checkpointing_modes_same_gradients_and_selective_keeps_attention():
    loss0, grads0, ops0 = _grads_and_backward_ops("none")
    assert _attention_forwards(ops0) == 0  # nothing recomputed without checkpointing
    for mode, recomputed in (("full", 3), ("selective", 0)):
        loss, grads, ops = _grads_and_backward_ops(mode)
        assert loss == pytest.approx(loss0, abs=1e-6)
        for name, g in grads.items():
            torch.testing.assert_close(g, grads0[name], atol=1e-6, rtol=1e-5, msg=f"{mode}: {name}")
        # the backward pass re-runs the attention kernel once per layer under full, never under selective
        assert _attention_forwards(ops) == recomputed, (mode, ops)
        # ... while the rest of the layer (projections) is recomputed in both modes
        assert ops.get("aten.mm.default", 0) > ops0.get("aten.mm.default", 0)


@needs_cuda  # FlexAttention has no backward on CPU
def test_selective_checkpointing_with_flex_attention():
    """FlexAttention (SelfExtend's CUDA path) is a higher-order op that selective checkpointing
    recomputes (SAC cannot store it); the gradients must still match."""
    loss0, grads0, _ = _grads_and_backward_ops("none", attn="flex_attention", device="cuda")
    loss, grads, ops = _grads_and_backward_ops("selective", attn="flex_attention", device="cuda")
    assert loss == pytest.approx(loss0, abs=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, grads0[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("backend", ["auto", "flash", "cudnn", "efficient", "math"])
def test_sdpa_backend_preference_gives_the_same_attention(backend):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 40, 16, generator=g) for _ in range(3))
    want = torch.softmax((q @ k.transpose(-1, -2) / 4.0).masked_fill(torch.ones(40, 40).triu(1).bool(), float("-inf")),
                         -1) @ v  # naive causal attention
    before = torch._C._get_sdp_priority_order()
    with sdpa_backend(backend):
        got = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch._C._get_sdp_priority_order() == before  # the preference ends with the block


def test_sdpa_backend_errors():
    with pytest.raises(ValueError, match="allowed: auto, flash, fa4"):
        with sdpa_backend("xformers"):
            pass
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="train.sdpa_backend: fa4 needs a CUDA GPU"):
            with sdpa_backend("fa4"):
                pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_liger_fails_early_with_the_key(tiny_llama):
    with pytest.raises(RuntimeError, match=r"^train\.liger: "):
        apply_liger(tiny_llama)


def test_checkpointing_param_values():
    assert build(TrainParams, {"gradient_checkpointing": True}, "train").gradient_checkpointing == "full"
    assert build(TrainParams, {"gradient_checkpointing": "false"}, "train").gradient_checkpointing == "none"
    assert build(TrainParams, {"gradient_checkpointing": "selective"}, "train").gradient_checkpointing == "selective"
    with pytest.raises(ParamsError, match="train.gradient_checkpointing: 'some' is not allowed; allowed: none, full"):
        build(TrainParams, {"gradient_checkpointing": "some"}, "train")
    with pytest.raises(ValueError, match="allowed: none, full, selective"):
        checkpointing_kwargs("partial")


@needs_cuda
def test_liger_modules_match_transformers_on_gpu():
    """Liger's RMSNorm and SwiGLU give the loss and gradients of transformers' own modules."""
    loss0, grads0, _ = _grads_and_backward_ops("none", device="cuda")
    loss, grads, _ = _grads_and_backward_ops("none", device="cuda", liger=True)
    assert loss == pytest.approx(loss0, abs=1e-4)
    for name, g in grads.items():
        torch.testing.assert_close(g, grads0[name], atol=1e-4, rtol=1e-3, msg=name)


@needs_cuda
@pytest.mark.parametrize("backend", ["flash", "fa4", "cudnn"])
def test_gpu_backends_match_math_forward_and_backward(backend):
    """Each fast backend (FlashAttention-4 included) against the math backend, bf16, GQA, causal."""
    if backend == "fa4":
        try:
            from longctx.kernels import check_fa4_available

            check_fa4_available()
        except RuntimeError as e:
            pytest.skip(str(e))
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 9, 2048, 64, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    k, v = (torch.randn(1, 3, 2048, 64, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
            for _ in range(2))

    def run(name):
        with sdpa_backend(name):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            out.float().square().sum().backward()
        grads = [t.grad.clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
        return out.detach(), grads

    ref, ref_grads = run("math")
    got, grads = run(backend)
    torch.testing.assert_close(got, ref, atol=2e-2, rtol=2e-2)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)
