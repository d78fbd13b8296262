"""The gateway's /metrics listener also speaks vLLM's names (``loraplex.gateway.vllm_metrics``):
each request series summed over tenants and adapters, labelled with the served model id, equal to
the gateway's own series.  Real uvicorn, NATS and Redis; the fake scheduler answers."""

from __future__ import annotations

import re

import httpx

from loraplex.tooling.ports import free_port
from tests.gateway.conftest import ALICE, BOB, MODEL_ID, REPLY_TEXT, FakeScheduler, GatewayFactory
from tests.gateway.test_metrics import _scrape_until
from tests.test_metrics_format import promtool_check, value

VLLM = f'engine="0",model_name="{MODEL_ID}"'
SAME_HISTOGRAMS = {
    "time_to_first_token_seconds": "time_to_first_token_seconds",
    "inter_token_latency_seconds": "inter_token_latency_seconds",
    "time_per_output_token_seconds": "inter_token_latency_seconds",
    "e2e_request_latency_seconds": "request_latency_seconds",
    "request_prompt_tokens": "request_prompt_tokens",
    "request_generation_tokens": "request_generation_tokens",
}


def _sum(text: str, pattern: str) -> float:
    """The sum of every series whose line matches ``pattern`` (over tenants, adapters)."""
    return sum(float(m.group(1)) for m in re.finditer(pattern + r" (\S+)\n", text))


async def test_vllm_series_sum_the_gateways_own(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler
) -> None:
    port = free_port()
    async with (
        gateway_factory(metrics_port=port) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        for headers, finish in ((ALICE, "stop"), (BOB, "stop"), (ALICE, "length")):
            scheduler.says(REPLY_TEXT, chunk=2, finish=finish)
            body = {"model": MODEL_ID, "prompt": "Hello", "max_tokens": 64}
            assert (await http.post("/v1/completions", json=body, headers=headers)).is_success
        scheduler.says(REPLY_TEXT, finish=None, error=(500, "boom"))
        body = {"model": MODEL_ID, "prompt": "Hello", "max_tokens": 64, "stream": True}
        await http.post("/v1/completions", json=body, headers=BOB)
        text = await _scrape_until(
            f"http://127.0.0.1:{port}/metrics", "loraplex_gateway_requests_in_flight 0.0"
        )
    promtool_check(text)
    types = dict(re.findall(r"# TYPE (vllm:\S+) (\S+)", text))
    assert types == {
        **{f"vllm:{name}": "histogram" for name in SAME_HISTOGRAMS},
        "vllm:prompt_tokens_total": "counter",
        "vllm:generation_tokens_total": "counter",
        "vllm:request_success_total": "counter",
    }
    for vllm, own in SAME_HISTOGRAMS.items():
        for part in ("count", "sum"):
            mine = value(text, f"loraplex_gateway_{own}_{part}")
            assert value(text, f"vllm:{vllm}_{part}{{{VLLM}}}") == mine, (vllm, part)
        le = 'le="+Inf"'
        assert value(text, f'vllm:{vllm}_bucket{{engine="0",{le},model_name="{MODEL_ID}"}}') > 0
    assert value(text, f"vllm:time_to_first_token_seconds_count{{{VLLM}}}") == 4
    for vllm, kind in (
        ("prompt_tokens_total", "prompt"),
        ("generation_tokens_total", "completion"),
    ):
        mine = _sum(text, rf'loraplex_gateway_tokens_total\{{kind="{kind}",tenant="\w+"\}}')
        assert mine > 0 and value(text, f"vllm:{vllm}{{{VLLM}}}") == mine, vllm
    success = {
        reason: value(text, f'vllm:request_success_total{{engine="0",finished_reason="{reason}",'
                      f'model_name="{MODEL_ID}"}}')
        for reason in ("stop", "length", "abort", "error", "repetition")
    }  # fmt: skip
    assert success == {"stop": 2, "length": 1, "abort": 0, "error": 1, "repetition": 0}
    assert sum(success.values()) == _sum(
        text, r'loraplex_gateway_generations_finished_total\{reason="\w+"\}'
    )
    assert "tenant" not in "".join(ln for ln in text.splitlines() if ln.startswith("vllm:"))
