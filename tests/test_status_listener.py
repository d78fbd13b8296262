"""The /health, /ready, /metrics listener of the scheduler and the workers
(``loraplex.status_server``): real uvicorn on a real socket, the readiness each service computes,
and a taken port that stops the process at start-up with a message naming the flag."""

from __future__ import annotations

import socket
import subprocess
import sys
import types

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from loraplex.status_server import StatusListener, StatusListenError, status_app
from loraplex.tooling.ports import free_port
from loraplex.worker.http_status import WorkerStatus
from loraplex.worker.metrics import WorkerMetrics


async def test_the_three_routes_and_nothing_else() -> None:
    registry = CollectorRegistry()
    Counter("loraplex_test_things", "things", registry=registry).inc(3)
    state = {"ok": False}
    app = status_app(registry, lambda: (state["ok"], {"why": "because"}))
    listener = StatusListener(app, "127.0.0.1", free_port())
    base = await listener.start()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            assert (await http.get("/health")).json() == {"status": "ok"}
            r = await http.get("/ready")
            assert r.status_code == 503 and r.json() == {"status": "unavailable", "why": "because"}
            state["ok"] = True
            assert (await http.get("/ready")).status_code == 200
            metrics = await http.get("/metrics")
            assert "loraplex_test_things_total 3.0" in metrics.text
            assert metrics.headers["content-type"].startswith("text/plain")
            assert (await http.get("/v1/completions")).status_code == 404
            assert (await http.post("/metrics", content=b"x" * 10_000)).status_code == 405
    finally:
        await listener.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/health", timeout=2)


async def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = StatusListener(
            status_app(CollectorRegistry(), lambda: (True, {})), "127.0.0.1", port
        )
        with pytest.raises(StatusListenError, match=f"cannot serve .* on 127.0.0.1:{port}"):
            await listener.start()


@pytest.mark.parametrize("module", ["loraplex.scheduler", "loraplex.decode"])
def test_a_service_on_a_taken_port_exits_naming_the_flag(module: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The listener starts before NATS (and before a worker's model): the process stops at once."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", module, "--metrics-port", str(port)]
        argv += ["--nats-url", "nats://127.0.0.1:1"]
        if module != "loraplex.scheduler":
            argv += ["--model", str(tmp_path / "no-model-needed-yet")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"cannot serve /health, /ready and /metrics on 127.0.0.1:{port}" in done.stderr
    assert "--metrics-port" in done.stderr


def test_worker_readiness_follows_its_lifecycle() -> None:
    status = WorkerStatus(WorkerMetrics("w", "decode"))
    assert status.ready() == (False, {"state": "loading"})
    bus = types.SimpleNamespace(is_connected=True)
    worker = types.SimpleNamespace(bus=bus, draining=False, engine=None)
    status.attach(worker)  # type: ignore[arg-type]
    assert status.ready() == (True, {"state": "serving", "nats": True})
    bus.is_connected = False
    assert status.ready()[0] is False
    bus.is_connected, worker.draining = True, True
    assert status.ready() == (False, {"state": "draining", "nats": True})
