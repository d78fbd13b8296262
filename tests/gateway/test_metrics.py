"""``/metrics`` is served only on the gateway's own metrics listener (it names tenants): the
public port answers 404 and shows no tenant, the listener shows the gateway's series, per tenant
and adapter (the scheduler's and workers' series are on their own listeners, not relayed here).
Real uvicorn, NATS and Redis; the fake scheduler answers."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import httpx
import pytest

from loraplex.gateway.metrics import GatewayMetrics
from loraplex.gateway.metrics_server import MetricsListenError, metrics_listener
from loraplex.text.tokenizer import Tokenizer
from loraplex.tooling.demo import DemoModelInfo
from loraplex.tooling.ports import free_port
from tests.gateway.conftest import ALICE, MODEL_ID, REPLY_TEXT, FakeScheduler, GatewayFactory, Plan

COMPLETIONS = "/v1/completions"


def _body(**kw: object) -> dict:
    return {"model": MODEL_ID, "prompt": "Hello", "max_tokens": 16, **kw}


async def _scrape_until(url: str, needle: str) -> str:
    """The scheduler's stats arrive over NATS: scrape until they show (bounded)."""
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            text = (await http.get(url)).text
            if needle in text:
                return text
            await asyncio.sleep(0.025)
    raise AssertionError(f"{needle!r} never showed on {url}:\n{text}")


async def test_metrics_only_on_the_metrics_listener(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    scheduler.plan = lambda _: Plan(tokens=ids, chunk=2)
    port = free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    async with (
        gateway_factory(metrics_port=port) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        assert (await http.post(COMPLETIONS, json=_body(), headers=ALICE)).status_code == 200
        await http.post(COMPLETIONS, json=_body(temperature=-1), headers=ALICE)
        text = await _scrape_until(metrics_url, "loraplex_gateway_requests_in_flight 0.0")
        # the API port: no metrics, for anyone, and nothing that names a tenant
        for headers in ({}, ALICE):
            public = await http.get("/metrics", headers=headers)
            assert public.status_code == 404 and "alice" not in public.text
            assert public.json()["error"]["message"] == "Not Found"
    assert 'loraplex_gateway_requests_total{route="/v1/completions",status="200"} 1.0' in text
    assert 'loraplex_gateway_requests_total{route="/v1/completions",status="400"} 1.0' in text
    tokens = f'loraplex_gateway_tokens_total{{kind="completion",tenant="alice"}} {float(len(ids))}'
    assert tokens in text
    assert 'loraplex_gateway_adapter_requests_total{adapter="base",tenant="alice"} 1.0' in text
    assert "loraplex_queue_depth" not in text and "loraplex_worker_" not in text  # not relayed
    assert "loraplex_gateway_time_to_first_token_seconds_count 1.0" in text
    assert "loraplex_gateway_requests_in_flight 0.0" in text
    assert 'loraplex_gateway_generations_finished_total{reason="stop"} 1.0' in text
    with pytest.raises(httpx.ConnectError):  # the listener stops with the gateway
        httpx.get(metrics_url, timeout=2)


async def test_a_taken_metrics_port_fails_the_start(demo: DemoModelInfo) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsListenError, match=f"cannot serve /metrics on 127.0.0.1:{port}"):
            async with metrics_listener(GatewayMetrics(), "127.0.0.1", port):
                pass
        # the gateway process exits at start-up, before it needs NATS
        argv = [sys.executable, "-m", "loraplex.gateway", "--model", str(demo.model_dir)]
        argv += ["--port", str(free_port()), "--metrics-port", str(port)]
        argv += ["--nats-url", "nats://127.0.0.1:1"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in done.stderr


async def test_responses_tenants_and_other_front_doors_are_counted(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler
) -> None:
    """Kept Responses answers by outcome, the tenants file's changes, and the Responses and
    TGI routes under their own (bounded) route labels.  In flight back at 0: a non-streamed
    /generate once never closed its generation (its queue, resubmit entry and metrics stayed)."""
    port = free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    async with (
        gateway_factory(metrics_port=port, max_model_len=4096, responses_max_kb=2) as url,
        httpx.AsyncClient(base_url=url, headers=ALICE) as http,
    ):
        scheduler.says(REPLY_TEXT)
        r = await http.post("/v1/responses", json={"model": MODEL_ID, "input": "Hi"})
        scheduler.says(REPLY_TEXT)
        big = {"model": MODEL_ID, "input": "word " * 600}
        assert (await http.post("/v1/responses", json=big)).json()["store"] is False
        assert (await http.get(f"/v1/responses/{r.json()['id']}")).status_code == 200
        assert (await http.get("/v1/responses/resp_x/input_items")).status_code == 404
        # every front door, whole and streamed: each generation is closed once answered
        for path, body in (
            ("/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 4}}),
            ("/generate_stream", {"inputs": "Hi", "parameters": {"max_new_tokens": 4}}),
            ("/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 4}}),
            ("/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 4}, "stream": True}),
            ("/v1/responses", {"model": MODEL_ID, "input": "Hi", "stream": True}),
        ):
            scheduler.says(REPLY_TEXT)
            assert (await http.post(path, json=body)).status_code == 200, path
        text = await _scrape_until(metrics_url, "loraplex_gateway_requests_in_flight 0.0")
    assert 'loraplex_gateway_responses_kept_total{outcome="kept"} 2.0' in text
    assert 'loraplex_gateway_responses_kept_total{outcome="too_large"} 1.0' in text
    for route, status in (
        ("/v1/responses", "200"),
        ("/v1/responses/{id}", "200"),
        ("/v1/responses/{id}/input_items", "404"),
        ("/generate", "200"),
        ("/generate_stream", "200"),
    ):
        assert f'loraplex_gateway_requests_total{{route="{route}",status="{status}"}} ' in text
    assert 'loraplex_tenants_file_changes_total{result="refused"} 0.0' in text
