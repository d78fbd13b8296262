"""Observability of a live stack (one prefill and one decode worker, real processes): every
service answers /health and /ready, every service's live /metrics passes ``promtool check
metrics``, worker series come from the workers themselves (once, not through the gateway), every
metric the shipped Grafana dashboard queries exists, and the gateway's /ready follows the decode
pool: a stopped decode worker makes it 503 until the worker is back."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.stack.conftest import launch
from tests.test_metrics_format import promtool_check

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "loraplex.json"
# PromQL words that look like metric names but are not (functions, keywords).
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_SELECTOR = re.compile(r"\b(loraplex_[a-z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = launch(tmp_path_factory, "observability", ["--prefill-workers", "1"])
    client = openai.OpenAI(base_url=stack.urls["gateway"] + "/v1", api_key="x", max_retries=0)
    base_model = client.models.list().data[0].id
    for model in (stack.adapters[0].name, stack.adapters[1].name, base_model):  # page-ins
        client.completions.create(model=model, prompt="Hello there", max_tokens=4)
    stream = client.completions.create(model=base_model, prompt="Hi", max_tokens=4, stream=True)
    assert list(stream)
    with pytest.raises(openai.BadRequestError):  # an error for the errors panel
        client.completions.create(model=base_model, prompt="Hi", max_tokens=4, temperature=-1)
    yield stack
    stack.stop()


def _metrics_urls(stack) -> dict[str, str]:
    urls = {"gateway": stack.urls["metrics"]}
    urls.update({name: base + "/metrics" for name, base in stack.status.items()})
    return urls


def _scrape(stack) -> dict[str, str]:
    return {name: httpx.get(url, timeout=10).text for name, url in _metrics_urls(stack).items()}


def test_every_service_answers_health_and_ready(stack) -> None:
    bases = {"gateway": stack.urls["gateway"], "adapter-store": stack.urls["adapter_store"]}
    bases.update(stack.status)
    assert set(bases) == {"gateway", "adapter-store", "scheduler", "prefill-0", "decode-0"}
    for name, base in bases.items():
        assert httpx.get(base + "/health", timeout=10).status_code == 200, name
        ready = httpx.get(base + "/ready", timeout=10)
        assert ready.status_code == 200, f"{name}: {ready.text}"
    scheduler = httpx.get(stack.status["scheduler"] + "/ready", timeout=10).json()
    assert scheduler["can_serve"] is True and scheduler["leader"] is True  # the only replica
    assert scheduler["pools"] == {"prefill": 1, "decode": 1, "both": 0}
    metrics = httpx.get(stack.status["scheduler"] + "/metrics", timeout=10).text
    assert re.search(r"^loraplex_scheduler_leader 1\.0$", metrics, re.M), metrics


def test_every_live_metrics_passes_promtool(stack) -> None:
    scrapes = _scrape(stack)
    assert set(scrapes) == {"gateway", "scheduler", "prefill-0", "decode-0"}
    for name, text in scrapes.items():
        assert "# TYPE loraplex_" in text, name
        promtool_check(text)


def test_worker_series_are_exported_once_by_their_worker(stack) -> None:
    scrapes = _scrape(stack)
    assert "loraplex_worker_" not in scrapes["gateway"]
    assert "loraplex_worker_" not in scrapes["scheduler"]
    for name in ("prefill-0", "decode-0"):
        workers = set(re.findall(r'worker="([^"]+)"', scrapes[name]))
        assert workers == {name}, workers
    prefill, decode = scrapes["prefill-0"], scrapes["decode-0"]
    sent = re.search(
        r'loraplex_worker_kv_handover_bytes_total\{direction="sent"[^}]*\} (\S+)', prefill
    )
    got = re.search(r'kv_handover_bytes_total\{direction="received"[^}]*\} (\S+)', decode)
    assert sent and got and float(sent.group(1)) > 0 and float(got.group(1)) == float(sent.group(1))
    pages = re.search(r'loraplex_worker_adapter_page_ins_total\{outcome="ok"[^}]*\} (\S+)', decode)
    assert pages and float(pages.group(1)) >= 2  # the two adapters the fixture used


def _series(text: str) -> dict[str, set[str]]:
    """Sample name -> label names seen on it, from an exposition."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?", line)
        if m:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
            out.setdefault(m.group(1), set()).update(labels)
    return out


def dashboard_selectors() -> list[tuple[str, set[str], str]]:
    """(metric, label names its selector matches on, expression) for every query of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [
        t["expr"] for p in dash["panels"] if p.get("type") != "row" for t in p.get("targets", [])
    ]
    assert exprs, "the dashboard has no queries"
    found = []
    for expr in exprs:
        names = _SELECTOR.findall(expr)
        assert names, f"no loraplex metric in {expr!r}"
        for metric, matchers in names:
            if metric not in _PROMQL_WORDS:
                found.append((metric, {m for m, _ in _MATCHER.findall(matchers or "")}, expr))
    return found


def test_dashboard_panels_cover_the_issue() -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for topic in (
        "throughput", "time to first token", "inter-token", "queue time", "queue depth per pool",
        "kv-cache", "adapter slots", "page-ins", "tenant", "errors",
    ):  # fmt: skip
        assert topic in titles, topic


def test_every_dashboard_metric_exists_on_the_live_stack(stack) -> None:
    live: dict[str, set[str]] = {}
    for text in _scrape(stack).values():
        for name, labels in _series(text).items():
            live.setdefault(name, set()).update(labels)
    missing = [(m, e) for m, _, e in dashboard_selectors() if m not in live]
    assert not missing, f"queried but not exported: {missing}"
    bad_labels = [(m, ls - live[m], e) for m, ls, e in dashboard_selectors() if ls - live[m]]
    assert not bad_labels, f"selectors on labels the series lack: {bad_labels}"


def _ready(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def _until(what: str, check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_gateway_ready_follows_the_decode_pool(stack) -> None:
    """Last in the module: a stopped (SIGSTOP) decode worker stops heart-beating; once the
    scheduler drops it, the gateway is not ready; when it runs again, the gateway is ready."""
    ready = stack.urls["gateway"] + "/ready"
    assert _ready(ready) == 200
    pid = stack.proc("decode-0").pid
    os.kill(pid, signal.SIGSTOP)
    try:
        _until("the gateway to become unready", lambda: _ready(ready) == 503)
        body = httpx.get(ready, timeout=5).json()
        assert body["error"]["code"] == "no_capacity" and body["pools"]["decode"] == 0, body
        assert _ready(stack.status["scheduler"] + "/ready") == 200  # the scheduler itself is fine
    finally:
        os.kill(pid, signal.SIGCONT)
    _until("the gateway to be ready again", lambda: _ready(ready) == 200)
