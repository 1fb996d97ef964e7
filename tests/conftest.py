"""Shared fixtures: a tiny randomly initialised Llama that runs in well under a second on the CPU."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama_config(**overrides) -> LlamaConfig:
    """A 2-layer Llama with grouped-query attention (4 query heads, 2 KV heads, head_dim 16)."""
    kw = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


@pytest.fixture
def tiny_config():
    return tiny_llama_config()


@pytest.fixture
def tiny_llama():
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    return model
