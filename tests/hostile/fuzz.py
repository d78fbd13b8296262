"""A bounded, reproducible fuzz run of the gateway: generation routes, /tokenize, /detokenize and the
adapter routes, with bodies drawn by Hypothesis (derandomized, so every run sends the same cases).

Bodies (``fuzz_bodies.py``) are mostly well-formed JSON objects of the routes' own fields holding
hostile values, plus raw bytes.  Every answer is recorded, not asserted inside
Hypothesis, so one run reports every failure: a 5xx, a dropped connection, an error without an
OpenAI error body, or a stream that does not end with ``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.hostile.adapter_files import AdapterFiles
from tests.hostile.fuzz_bodies import (
    ANY_TEXT,
    NAMES,
    NON_FINITE,
    chat_bodies,
    completion_bodies,
    config_edits,
    detokenize_bodies,
    load_lora_bodies,
    registration_bodies,
    responses_bodies,
    sglang_bodies,
    tgi_bodies,
    tokenize_bodies,
)
from tests.hostile.harness import BETA, HostileStack


@dataclass(frozen=True)
class Probe:
    """One fuzz request: method, path and httpx keyword arguments."""

    route: str
    method: str
    path: str
    kwargs: dict[str, Any] = field(repr=False)
    shown: str  # what to print for it

    @classmethod
    def json(cls, route: str, path: str, body: dict[str, Any], non_finite: str | None) -> Probe:
        text = json.dumps(body)  # ASCII escapes: lone surrogates are sent as \ud800
        if non_finite is not None and text.startswith("{") and len(text) > 2:
            text = text[:-1] + f', "temperature": {non_finite}}}'
        kwargs = {"content": text.encode(), "headers": {"content-type": "application/json"}}
        return cls(route, "POST", path, kwargs, text[:300])


@dataclass
class FuzzLog:
    """Every answer of a fuzz run, and the ones that are failures."""

    tried: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)

    def record(self, probe: Probe, r: httpx.Response | None, problem: str | None) -> None:
        self.tried += 1
        if r is not None:
            self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
        if problem:
            self.failures.append(f"{probe.route} {probe.shown} -> {problem}")


def judge(r: httpx.Response) -> str | None:
    """None if the answer is acceptable; else what is wrong with it."""
    if r.status_code >= 500:
        return f"{r.status_code}: {r.text[:200]}"
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
            assert isinstance(err["message"], str) and isinstance(err["type"], str)
        except Exception:
            return f"{r.status_code} without an OpenAI error body: {r.text[:200]}"
    elif r.headers.get("content-type", "").startswith("text/event-stream"):
        if r.request.url.path in ("/", "/generate_stream") or (
            r.request.url.path == "/generate" and not r.text.rstrip().endswith("data: [DONE]")
        ):  # /generate: LoRAX's events, or SGLang's, which end with [DONE]
            return _tgi_stream_problem(r.text)
        if r.request.url.path == "/v1/responses":
            last = r.text.strip().split("\n\n")[-1]
            if not last.startswith(
                ("event: response.completed", "event: response.incomplete", "event: error")
            ):
                return f"Responses stream did not end with its last event: {r.text[-200:]}"
            return None
        if not r.text.rstrip().endswith("data: [DONE]"):
            return f"stream did not end with [DONE]: {r.text[-200:]}"
    return None


def _tgi_stream_problem(text: str) -> str | None:
    """A TGI stream ends with an event that has ``generated_text``, or with an ``error`` one."""
    events = [e for e in text.split("\n\n") if e.strip()]
    try:
        last = json.loads(events[-1][len("data:") :])
    except (IndexError, ValueError):
        return f"TGI stream without a last event: {text[-200:]}"
    if last.get("generated_text") is None and not last.get("error"):
        return f"TGI stream did not end with generated_text: {text[-200:]}"
    return None


def send(client: httpx.Client, probe: Probe, log: FuzzLog) -> None:
    try:
        r = client.request(probe.method, probe.path, **probe.kwargs)
    except httpx.TransportError as e:
        log.record(probe, None, f"no answer ({e!r})")
        return
    log.record(probe, r, judge(r))


FUZZ_SETTINGS = settings(
    derandomize=True,  # the same cases on every run (CI, bench)
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # answers are recorded, nothing to shrink
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def route_plans(
    hs: HostileStack, template: AdapterFiles
) -> list[tuple[str, int, st.SearchStrategy[Probe]]]:
    """(route, examples, strategy of probes) for every fuzzed route; about 750 probes in all."""
    models = [hs.model_id, *hs.demo_adapters[:2], "no-such-model"]
    non_finite = st.none() | st.none() | st.none() | NON_FINITE

    def as_json(route: str, path: str, bodies: st.SearchStrategy) -> st.SearchStrategy[Probe]:
        return st.builds(lambda b, nf: Probe.json(route, path, b, nf), bodies, non_finite)

    def upload(edits: dict[str, Any], name: str) -> Probe:
        files = template.with_config(**edits)
        return Probe(
            "adapters multipart",
            "POST",
            "/v1/adapters",
            files.multipart(name, replace="true"),
            f"{name} {edits!r}"[:300],
        )

    def named(
        method: str, kind: str = "adapter", under: str = "/v1/adapters/", tail: str = ""
    ) -> Callable[[str], Probe]:
        return lambda name: Probe(
            f"{method} {kind}",
            method,
            under + quote(name.encode("utf-8", "surrogatepass"), safe="") + tail,
            {},
            repr(name),
        )

    response_ids = st.just("resp_" + "0" * 32) | ANY_TEXT
    pages = st.sampled_from(["", "?limit=0", "?limit=101", "?limit=x", "?order=up", "?after=%00"])
    input_items = st.builds(
        lambda rid, query: named("GET", "input_items", "/v1/responses/", "/input_items" + query)(rid),
        response_ids,
        pages,
    )  # fmt: skip

    raw = st.builds(
        lambda path, data: Probe(
            "raw bytes",
            "POST",
            path,
            {"content": data, "headers": {"content-type": "application/json"}},
            repr(data[:80]),
        ),
        st.sampled_from(
            [
                "/v1/completions",
                "/v1/chat/completions",
                "/tokenize",
                "/v1/adapters",
                "/v1/load_lora_adapter",
            ]
        ),
        st.binary(max_size=64) | st.just(b'{"model": "\xff"}'),
    )
    return [
        ("completions", 150, as_json("completions", "/v1/completions", completion_bodies(models))),
        ("chat", 100, as_json("chat", "/v1/chat/completions", chat_bodies(models))),
        ("tokenize", 60, as_json("tokenize", "/tokenize", tokenize_bodies(models))),
        ("detokenize", 40, as_json("detokenize", "/detokenize", detokenize_bodies(models))),
        ("generate", 40, as_json("generate", "/generate", tgi_bodies(models))),
        ("responses", 50, as_json("responses", "/v1/responses", responses_bodies(models))),
        ("sglang generate", 40, as_json("sglang generate", "/generate", sglang_bodies(models))),
        ("generate_stream", 20, as_json("generate_stream", "/generate_stream", tgi_bodies(models))),
        ("adapters path", 40, as_json("adapters path", "/v1/adapters", registration_bodies())),
        ("load_lora_adapter", 30, as_json("load_lora_adapter", "/v1/load_lora_adapter", load_lora_bodies())),
        ("adapters multipart", 100, st.builds(upload, config_edits(), NAMES | ANY_TEXT)),
        ("GET adapter", 20, (NAMES | ANY_TEXT).map(named("GET"))),
        ("DELETE adapter", 20, (NAMES | ANY_TEXT).map(named("DELETE"))),
        ("GET response", 15, response_ids.map(named("GET", "response", "/v1/responses/"))),
        ("DELETE response", 10, response_ids.map(named("DELETE", "response", "/v1/responses/"))),
        ("cancel response", 10, response_ids.map(named("POST", "cancel", "/v1/responses/", "/cancel"))),
        ("input_items", 15, input_items),
        ("raw bytes", 40, raw),
    ]  # fmt: skip


def run_fuzz(hs: HostileStack, template: AdapterFiles, scale: float = 1.0) -> FuzzLog:
    """Send every route's probes as BETA; ``scale`` multiplies the number of examples."""
    log = FuzzLog()
    with hs.http(BETA, timeout=60) as client:
        for _, examples, probes in route_plans(hs, template):

            @settings(FUZZ_SETTINGS, max_examples=max(1, int(examples * scale)))
            @given(probes)
            def fuzz_route(probe: Probe) -> None:
                send(client, probe, log)

            fuzz_route()
    return log
