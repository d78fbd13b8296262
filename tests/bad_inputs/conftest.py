"""Fixtures for the bad-input tests (module scope): a tiny random model directory with a
tokenizer, a good PEFT adapter, and an ``LLM`` on that model."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplex import LLM
from loraplex.tooling.demo import write_demo_tokenizer, write_random_adapter, write_random_model
from tests.bad_inputs.helpers import OPTS, SPEC


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-inputs")


@pytest.fixture(scope="module")
def model_src(root) -> Path:
    d = root / "model"
    write_random_model(d, SPEC)
    write_demo_tokenizer(d, SPEC.vocab_size)
    return d


@pytest.fixture(scope="module")
def llm(model_src) -> LLM:
    return LLM(model_src, max_loras=2, **OPTS)


@pytest.fixture(scope="module")
def adapter_src(root) -> Path:
    d = root / "adapter"
    write_random_adapter(d, SPEC, rank=4, alpha=8, targets=("q_proj", "v_proj"), seed=1)
    return d
