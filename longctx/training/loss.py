"""Loss: the model's own, or fused (chunked lm_head + cross-entropy, no full logits)."""

from __future__ import annotations

import torch


def _chunk_ce_sum(h, weight, bias, y):
    logits = torch.nn.functional.linear(h, weight, bias).float()
    return torch.nn.functional.cross_entropy(logits, y, reduction="sum")


def _liger_loss():
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="mean")


def fused_causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         bias: torch.Tensor | None = None, chunk_size: int = 1024, liger: bool = False):
    """Causal-LM cross-entropy from the final hidden states without materialising the full logits.

    Same value as transformers' loss (shifted labels, ``-100`` ignored, mean over label tokens):
    only label positions go through the lm_head, ``chunk_size`` rows at a time, each chunk
    recomputed in the backward pass (so at most one chunk of logits is alive). ``liger=True`` (CUDA)
    has Liger's fused linear cross-entropy do the same in one kernel.
    """
    y = labels[:, 1:]
    keep = y != -100
    h = hidden[:, :-1][keep]
    y = y[keep]
    n = y.numel()
    if n == 0:
        return hidden.sum() * 0.0
    if liger:
        if torch.is_autocast_enabled("cuda"):  # a Triton kernel: autocast does not reach it, so cast here
            dt = torch.get_autocast_dtype("cuda")
            h, weight, bias = h.to(dt), weight.to(dt), bias.to(dt) if bias is not None else None
        return _liger_loss()(weight, h, y, bias)
    from torch.utils.checkpoint import checkpoint

    total = None
    for i in range(0, n, chunk_size):
        part = checkpoint(_chunk_ce_sum, h[i:i + chunk_size], weight, bias, y[i:i + chunk_size], use_reentrant=False)
        total = part if total is None else total + part
    return total / n


def _causal_lm(model):
    """The transformers *ForCausalLM inside accelerate/PEFT wrappers."""
    m = getattr(model, "module", model)  # DDP
    return m.get_base_model() if hasattr(m, "get_base_model") else m


class LossFn:
    """``loss_fn(model, batch)``: the model's own loss, or (``fused=True``) ``fused_causal_lm_loss``.

    The fused path still calls the (wrapped) model's forward, so DDP, PEFT and gradient
    checkpointing see an ordinary forward; it asks for the logits of one position only
    (``logits_to_keep=1``) and takes the final hidden states from a hook on the decoder.
    """

    def __init__(self, model, fused: bool = False, chunk_size: int = 1024, liger: bool = False):
        self.fused, self.chunk_size, self.liger, self._hidden = fused, chunk_size, liger, None
        if fused:
            lm = _causal_lm(model)
            if getattr(lm.config, "final_logit_softcapping", None):
                raise ValueError("train.fused_ce: models with logit soft-capping are not supported; "
                                 "set fused_ce: false")
            head = lm.get_output_embeddings()
            if hasattr(head, "lora_A"):
                raise ValueError("train.fused_ce: LoRA on lm_head is not supported; drop lm_head from target_modules")
            self._head = head
            lm.get_decoder().register_forward_hook(self._grab)

    def _grab(self, module, args, output):
        self._hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def __call__(self, model, batch: dict) -> torch.Tensor:
        if not self.fused:
            return model(**batch).loss
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        model(**inputs, logits_to_keep=1)
        hidden, self._hidden = self._hidden, None
        weight, bias = self._head.weight, getattr(self._head, "bias", None)
        return fused_causal_lm_loss(hidden, weight, batch["labels"], bias, self.chunk_size, liger=self.liger)


