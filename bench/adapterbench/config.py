"""Shared constants: docs section title, Llama-2-7B config, owner, units, fetch signature."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

SECTION = "Adapter paging (bench/adapters.py)"
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
}
MLP = ("gate_proj", "up_proj", "down_proj")
OWNER = "bench"
MB = 2**20

Fetch = Callable[[str], Awaitable[tuple[bytes, bytes, str]]]
