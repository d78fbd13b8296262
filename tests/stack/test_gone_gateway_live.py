"""A gateway killed under ``loraplex up``'s supervisor while it streams a long request: the
scheduler hears its heartbeats stop and cancels the request within ``--gateway-timeout`` (plus a
liveness tick), so the worker stops generating for nobody; the supervisor brings the gateway back
(a new process, a new gateway id) and the stack serves again."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from tests.stack.conftest import launch
from tests.stack.test_self_healing import _model, _serves

GATEWAY_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = launch(
        tmp_path_factory,
        "gonegw",
        ["--prefill-workers", "0", "--gateway-timeout", str(GATEWAY_TIMEOUT_S)],
    )
    yield stack
    stack.stop()


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in the scheduler's metrics"
    return float(m.group(1))


def test_a_killed_gateways_request_is_cancelled_not_run_to_its_end(stack):
    base = stack.urls["gateway"]
    metrics_url = stack.status["scheduler"] + "/metrics"
    model = _model(base)
    _serves(base, model)
    context = httpx.get(base + "/v1/models", timeout=10).json()["data"][0]["max_model_len"]
    tokens_seen = threading.Event()
    # As long as the context allows: it would run far past the cancel.
    body = {"model": model, "prompt": [5, 6, 7], "max_tokens": context - 3, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip

    def stream() -> None:  # cut off when the gateway dies
        try:
            with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        tokens_seen.set()
        except httpx.HTTPError:
            pass

    client = threading.Thread(target=stream, daemon=True)
    client.start()
    assert tokens_seen.wait(60), "the stream did not start"
    before = httpx.get(metrics_url, timeout=5).text
    assert _metric(before, "loraplex_scheduler_inflight_requests") == 1
    stack.service("gateway").proc.kill()
    killed = time.monotonic()
    while True:
        text = httpx.get(metrics_url, timeout=5).text
        if _metric(text, "loraplex_scheduler_orphaned_requests_cancelled_total") >= 1:
            break
        assert time.monotonic() - killed < GATEWAY_TIMEOUT_S + 8, "never cancelled"
        time.sleep(0.2)
    assert _metric(text, "loraplex_scheduler_inflight_requests") == 0
    client.join(30)
    deadline = time.monotonic() + 60  # the supervisor restarts the gateway (with backoff)
    while True:
        try:
            if httpx.get(base + "/ready", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the gateway did not come back"
        time.sleep(0.3)
    _serves(base, model)
    assert stack.service("gateway").restarts >= 1
