"""After the start-up warm-up, batches of shapes never seen compile nothing and do not stall
(CUDA only; `pytest -m gpu`).  What the warm-up enumerates is tested on CPU in
``tests/test_warmup.py``."""

from __future__ import annotations

import time

import pytest
import torch

from loraplex import SamplingParams
from loraplex.engine.warmup import Pattern
from loraplex.engine.warmup_run import count_compiles, run_pattern, warm_up
from loraplex.tooling.demo import ALL_MODULES, TinyModelSpec
from tests.tiny_models import llm_with_adapters, ranked, write_model_and_adapters

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# Heads of 128 like Llama-2-7B, 4 narrow layers: each step takes a few ms, a compile ~1 s.
SPEC = TinyModelSpec(
    seed=2,
    hidden_size=1024,
    intermediate_size=2816,
    num_heads=8,
    num_kv_heads=8,
    num_layers=4,
    max_position_embeddings=4096,
)
ADAPTERS = {f"a{i}": ((8, 16, 32)[i % 3], ALL_MODULES) for i in range(8)}
# Shapes no warm-up pattern has: other prompt counts and lengths, segment layouts, tables.
UNSEEN = [
    Pattern(3, 100, adapters=1, rank=16),
    Pattern(5, 77, adapters=5, rank=8),
    Pattern(7, 200, adapters=3, base_rows=True, rank=32),
    Pattern(1, 300),
    Pattern(2, 50, prefix=64),
    Pattern(3, 33, prefix=500, adapters=2, rank=16),
    Pattern(20, 100, adapters=8, rank=16),
    Pattern(1, 40, decode_rows=5, table_width=7, adapters=4, rank=16),
    Pattern(1, 9, decode_rows=3, table_width=32),
]
SLACK_S = 0.005  # allocator growth on a first run is not a compile


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    model, paths = write_model_and_adapters(
        tmp_path_factory.mktemp("warmup_gpu"), SPEC, ranked(ADAPTERS)
    )
    llm = llm_with_adapters(
        model,
        paths,
        dtype="bfloat16",
        device="cuda",
        max_loras=8,
        max_lora_rank=32,
        max_num_seqs=32,
        max_num_batched_tokens=2048,
        max_model_len=2048,
    )
    report = warm_up(llm.engine, "full")
    print(report.line())
    assert report.patterns > 20
    return llm


def _timed(engine, p: Pattern) -> float:  # type: ignore[no-untyped-def]
    torch.cuda.synchronize()
    start = time.perf_counter()
    run_pattern(engine, p)
    torch.cuda.synchronize()
    return time.perf_counter() - start


@pytest.mark.parametrize("pattern", UNSEEN, ids=lambda p: p.name)
def test_unseen_shapes_compile_nothing_and_do_not_stall(engine, pattern: Pattern) -> None:
    with count_compiles() as compiled:
        times = [_timed(engine.engine, pattern) for _ in range(10)]
    assert not compiled.triton, compiled.triton
    assert not compiled.dynamo
    assert times[0] <= 2 * times[9] + SLACK_S, times


def test_serving_after_warmup_compiles_nothing(engine) -> None:
    """Whole requests: 32 rows on one adapter (the stall seen on the H200), then all adapters."""
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = [[(i * 31 + j) % 1000 + 4 for j in range(40 + i)] for i in range(32)]
    with count_compiles() as compiled:
        engine.generate(prompts, params, lora="a0")
        engine.generate(prompts, params, lora=[f"a{i % 8}" for i in range(32)])
    assert not compiled.triton, compiled.triton
    assert not compiled.dynamo
