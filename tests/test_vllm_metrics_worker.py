"""A worker's /metrics also speaks vLLM's names (``loraplex.worker.vllm_metrics``): a real engine
(tiny model, CPU) behind the real listener; each vLLM series has vLLM's type and labels and the
value of the matching ``loraplex_worker_*`` series, read from the same engine state."""

from __future__ import annotations

import dataclasses
import time

import httpx
import pytest

from loraplex import LLM, SamplingParams
from loraplex.tooling.demo import ALL_MODULES, TinyModelSpec
from loraplex.tooling.ports import free_port
from loraplex.worker.http_status import WorkerStatus, start_worker_status
from loraplex.worker.metrics import WorkerMetrics
from tests.test_metrics_format import promtool_check, value
from tests.tiny_models import ranked, write_model_and_adapters

SPEC = TinyModelSpec(arch="qwen2", seed=7, num_kv_heads=1)
VLLM = 'engine="0",model_name="model"'  # the model directory's last component
IDS = 'role="both",worker="w0"'


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> LLM:
    adapters = ranked({"a": (4, ALL_MODULES), "b": (4, ALL_MODULES)})
    model, paths = write_model_and_adapters(tmp_path_factory.mktemp("vllm-names"), SPEC, adapters)
    # one request runs at a time: the others wait
    llm = LLM(model, dtype="float32", device="cpu", max_loras=2, max_lora_rank=8, max_num_seqs=1)
    # named as a worker keys paged-in adapters: "owner/name@version" (adapter_pager.py)
    for key, name in (("a", "t/a@1"), ("b", "u/b@m2")):
        llm.engine.add_lora_adapter(dataclasses.replace(llm.add_lora(key, paths[key]), name=name))
    return llm


async def _scrape(metrics: WorkerMetrics) -> str:
    port = free_port()
    listener = await start_worker_status(WorkerStatus(metrics), "127.0.0.1", port)
    assert listener is not None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            return (await http.get("/metrics")).text
    finally:
        await listener.stop()


def _types(text: str) -> dict[str, str]:
    return {
        ln.split()[2]: ln.split()[3] for ln in text.splitlines() if ln.startswith("# TYPE vllm:")
    }


async def test_vllm_series_match_the_workers_own(llm: LLM, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("LORAPLEX_MODEL_ID", raising=False)
    engine = llm.engine
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompt = [(i * 37 + 5) % 200 for i in range(10)]
    engine.add_request("r0", prompt, greedy, "t/a@1")
    engine.add_request("r1", prompt, greedy, "u/b@m2")
    engine.add_request("r2", prompt, greedy)
    engine.step()
    metrics = WorkerMetrics("w0", "both")
    metrics.bind(engine)
    before = time.time()
    text = await _scrape(metrics)
    promtool_check(text)
    assert _types(text) == {
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:gpu_cache_usage_perc": "gauge",
        "vllm:num_preemptions_total": "counter",
        "vllm:prefix_cache_queries_total": "counter",
        "vllm:prefix_cache_hits_total": "counter",
        "vllm:lora_requests_info": "gauge",
    }
    same = {
        "num_requests_running": "requests_running",
        "num_requests_waiting": "requests_waiting",
        "kv_cache_usage_perc": "kv_usage_ratio",
        "gpu_cache_usage_perc": "kv_usage_ratio",
        "num_preemptions_total": "preemptions_total",
        "prefix_cache_queries_total": "prefix_cache_query_tokens_total",
        "prefix_cache_hits_total": "prefix_cache_hit_tokens_total",
    }
    for vllm, own in same.items():
        assert value(text, f"vllm:{vllm}{{{VLLM}}}") == value(
            text, f"loraplex_worker_{own}{{{IDS}}}"
        ), vllm
    assert value(text, f"vllm:num_requests_running{{{VLLM}}}") == 1
    assert value(text, f"vllm:num_requests_waiting{{{VLLM}}}") == 2
    assert 0 < value(text, f"vllm:kv_cache_usage_perc{{{VLLM}}}") <= 1
    assert value(text, f"vllm:prefix_cache_queries_total{{{VLLM}}}") > 0
    # vLLM's LoRA gauge: adapter ids without the worker's @version, the slot count, a timestamp
    lora = 'vllm:lora_requests_info{max_lora="2",running_lora_adapters="t/a",waiting_lora_adapters="u/b"}'
    assert before <= value(text, lora) <= time.time()
    assert text.count("vllm:lora_requests_info{") == 1
    while engine.has_unfinished():
        engine.step()
    text = await _scrape(metrics)
    idle = 'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""}'
    assert value(text, idle) > 0 and value(text, f"vllm:num_requests_running{{{VLLM}}}") == 0


async def test_model_name_is_the_gateways_default_model_id(llm: LLM, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LORAPLEX_MODEL_ID", "llama-3.1-8b")
    metrics = WorkerMetrics("w0", "both")
    metrics.bind(llm.engine)
    text = await _scrape(metrics)
    assert 'vllm:kv_cache_usage_perc{engine="0",model_name="llama-3.1-8b"}' in text
    explicit = WorkerMetrics("w0", "both", model_name="given")
    explicit.bind(llm.engine)
    assert 'model_name="given"' in await _scrape(explicit)


async def test_no_vllm_series_before_the_engine() -> None:
    """The listener starts before the model loads: nothing to read yet, nothing made up."""
    assert "vllm:" not in await _scrape(WorkerMetrics("w0", "both"))
