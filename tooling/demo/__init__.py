"""Deterministic offline tiny models, tokenizer and LoRA adapters for tests and demos."""

from __future__ import annotations

from loraplex.tooling.demo.demo_model import (
    MANIFEST_NAME,
    DemoAdapterInfo,
    DemoModelInfo,
    demo_model_spec,
    write_demo_model,
)
from loraplex.tooling.demo.model_writer import (
    ALL_MODULES,
    ATTN_MODULES,
    MLP_MODULES,
    TinyModelSpec,
    lora_scaling,
    model_config,
    random_model_tensors,
    write_random_adapter,
    write_random_model,
)
from loraplex.tooling.demo.tokenizer_builder import (
    BOS_TOKEN,
    BOS_TOKEN_ID,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    EOS_TOKEN_ID,
    IM_END,
    IM_END_ID,
    IM_START,
    IM_START_ID,
    build_demo_tokenizer,
    write_demo_tokenizer,
)

__all__ = [
    "ALL_MODULES",
    "ATTN_MODULES",
    "BOS_TOKEN",
    "BOS_TOKEN_ID",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "EOS_TOKEN_ID",
    "IM_END",
    "IM_END_ID",
    "IM_START",
    "IM_START_ID",
    "MANIFEST_NAME",
    "MLP_MODULES",
    "DemoAdapterInfo",
    "DemoModelInfo",
    "TinyModelSpec",
    "build_demo_tokenizer",
    "demo_model_spec",
    "lora_scaling",
    "model_config",
    "random_model_tensors",
    "write_demo_model",
    "write_demo_tokenizer",
    "write_random_adapter",
    "write_random_model",
]
