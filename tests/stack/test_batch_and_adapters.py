"""End to end on a disaggregated stack started with ``--adapters-root`` (issue 16): batch prompts
through the official ``openai`` client and in lm-evaluation-harness's ``local-completions``
request shape, ``usage.prompt_tokens_details.cached_tokens``, and vLLM's load / unload, which
must never lose an adapter's weights."""

from __future__ import annotations

import asyncio
import time
from operator import itemgetter
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import pytest

from loraplex import SamplingParams
from loraplex.protocol import Subjects, WorkerHeartbeat, decode
from loraplex.tooling.launcher import Stack, start_stack
from loraplex.tooling.ports import free_port
from loraplex.tooling.up_flags import parse_up_args
from tests.stack.conftest import STACK_FLAGS
from tests.stack.e2e_common import PROMPTS, offline_llm

TEXTS = ["Once upon a time", "The quick brown fox", "Hello, world! How are you today?"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("batch-adapters")
    stack = Stack(run_dir)
    # the demo model (and its adapters' folders) is written under the run dir: that is the root
    flags = ["--prefill-workers", "1", "--decode-workers", "1", "--adapters-root", str(run_dir)]
    args = parse_up_args(
        ["--port", str(free_port()), "--run-dir", str(run_dir), *STACK_FLAGS, *flags]
    )
    try:
        _, model, adapters = start_stack(args, stack)
    except BaseException:
        stack.stop()
        raise
    stack.urls["model_dir"] = model
    stack.adapters = adapters  # type: ignore[attr-defined]
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack.urls["gateway"] + "/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.urls["gateway"], timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def lora(stack) -> str:
    return stack.adapters[0].name


def _greedy(client, lora: str, prompt: Any, **kw: Any) -> list[str]:
    out = client.completions.create(model=lora, prompt=prompt, temperature=0, **kw)
    return [c.text for c in sorted(out.choices, key=lambda c: c.index)]


def test_openai_batches_answer_as_one_request_per_prompt(client, lora) -> None:
    singles = [_greedy(client, lora, p, max_tokens=5)[0] for p in TEXTS]
    assert _greedy(client, lora, TEXTS, max_tokens=5) == singles
    ids = [PROMPTS[0], PROMPTS[2], PROMPTS[4]]
    kw: dict[str, Any] = {"model": lora, "max_tokens": 4, "temperature": 0}
    singles_ids = [client.completions.create(prompt=p, **kw) for p in ids]
    out = client.completions.create(prompt=ids, n=2, **kw)
    assert [c.index for c in out.choices] == list(range(6))
    assert [c.text for c in out.choices] == [s.choices[0].text for s in singles_ids for _ in "ab"]
    assert out.usage.prompt_tokens == sum(len(p) for p in ids)
    assert out.usage.completion_tokens == 2 * sum(s.usage.completion_tokens for s in singles_ids)

    streamed: dict[int, str] = {}
    for chunk in client.completions.create(
        model=lora, prompt=TEXTS, max_tokens=5, temperature=0, stream=True
    ):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert [streamed[i] for i in range(len(TEXTS))] == singles


def _lm_eval_parse_logprobs(out: dict, ctxlens: list[int]) -> list[tuple[float, bool]]:
    """lm-evaluation-harness's ``LocalCompletionsAPI.parse_logprobs`` (lm_eval/models/
    openai_completions.py): choices by index, the continuation's scores after ``ctxlen``."""
    res = []
    for choice, ctxlen in zip(
        sorted(out["choices"], key=itemgetter("index")), ctxlens, strict=True
    ):
        token_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
        top_logprobs = choice["logprobs"]["top_logprobs"][ctxlen:-1]
        greedy = all(
            t == max(top.values()) for t, top in zip(token_logprobs, top_logprobs, strict=True)
        )
        res.append((sum(token_logprobs), greedy))
    return res


def test_lm_eval_local_completions_bodies_at_batch_size_4(stack, http, lora) -> None:
    """The bodies lm-eval's ``local-completions`` sends at ``batch_size`` > 1 (its
    ``_create_payload``): loglikelihood with token-id lists, and generate_until with texts."""
    llm = offline_llm(stack)
    contexts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[3]]
    continuations = [[11, 12], [13], [14, 15, 16], [17]]
    body = {
        "model": lora,
        "prompt": [c + k for c, k in zip(contexts, continuations, strict=True)],
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "seed": 1234,
        "echo": True,
    }
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    got = _lm_eval_parse_logprobs(r.json(), [len(c) for c in contexts])
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
    for (score, greedy), ctx, cont in zip(got, contexts, continuations, strict=True):
        offline = llm.generate(ctx + cont, params, lora=lora)[0].prompt_logprobs
        scored = offline[len(ctx) :]
        assert score == pytest.approx(sum(p.logprob for p in scored), abs=1e-3)
        assert greedy == all(p.logprob >= p.top[0][1] - 1e-6 for p in scored)

    gen = {"prompt": TEXTS + ["And then"], "model": lora, "max_tokens": 6, "temperature": 0,
           "stop": ["\n\n"], "seed": 1234}  # fmt: skip
    r = http.post("/v1/completions", json=gen)
    assert r.status_code == 200, r.text
    texts: list[str | None] = [None] * len(r.json()["choices"])  # its parse_generations
    for choice in r.json()["choices"]:
        texts[choice["index"]] = choice["text"]
    single = [http.post("/v1/completions", json={**gen, "prompt": p}) for p in gen["prompt"]]
    assert texts == [s.json()["choices"][0]["text"] for s in single]


def test_cached_tokens_report_prefix_cache_hits(client, lora) -> None:
    prompt = [(i * 37 + 501) % 1000 for i in range(40)]  # 2 full blocks of 16 before the last
    first = client.completions.create(model=lora, prompt=prompt, max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    again = client.completions.create(model=lora, prompt=prompt, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens == 32
    stream = client.completions.create(
        model=lora, prompt=prompt, max_tokens=2, stream=True, stream_options={"include_usage": True}
    )
    usage = [c.usage for c in stream if c.usage is not None]
    assert [u.prompt_tokens_details.cached_tokens for u in usage] == [32]

    messages = [{"role": "user", "content": "Tell me a long story about a fox and a dog. " * 3}]
    chat = [
        client.chat.completions.create(model=lora, messages=messages, max_tokens=2)
        for _ in range(2)
    ]
    assert chat[0].usage.prompt_tokens_details.cached_tokens == 0
    hits = chat[1].usage.prompt_tokens_details.cached_tokens
    assert hits > 0 and hits % 16 == 0 and hits < chat[1].usage.prompt_tokens


async def _resident(nats_url: str, aid: str) -> set[str]:
    """The workers whose heartbeats list adapter id ``aid`` (one heartbeat from each)."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.subscribe(Subjects.HEARTBEAT)
        seen: dict[str, bool] = {}
        while len(seen) < 2:  # one prefill and one decode worker
            beat = decode((await sub.next_msg(timeout=10)).data, WorkerHeartbeat)
            seen[beat.worker_id] = aid in beat.adapters
        return {w for w, has in seen.items() if has}
    finally:
        await nc.close()


def _until_resident(stack, aid: str, want: bool, timeout: float = 60) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        workers = asyncio.run(_resident(stack.urls["nats"], aid))
        if bool(workers) == want or time.monotonic() > deadline:
            return workers
        time.sleep(0.5)


def test_unload_stops_serving_but_keeps_an_uploaded_adapter(stack, client, http) -> None:
    source = stack.adapters[1].path
    files = [
        ("files", (f, (source / f).read_bytes(), "application/octet-stream"))
        for f in ("adapter_config.json", "adapter_model.safetensors")
    ]
    r = http.post("/v1/adapters", data={"name": "keep-me"}, files=files)
    assert r.status_code == 201, r.text
    sha = r.json()["sha256"]
    want = _greedy(client, "keep-me", TEXTS[0], max_tokens=6)
    assert _until_resident(stack, "default/keep-me", True)  # paged in on the workers

    r = http.post("/v1/unload_lora_adapter", json={"lora_name": "keep-me"})
    assert r.status_code == 200, r.text
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="keep-me", prompt=TEXTS[0], max_tokens=2)
    assert "keep-me" not in {m.id for m in client.models.list().data}
    assert _until_resident(stack, "default/keep-me", False) == set()  # dropped, slots freed
    assert http.get("/v1/adapters/keep-me").json()["sha256"] == sha  # never destroyed

    r = http.post("/v1/load_lora_adapter", json={"lora_name": "keep-me"})
    assert r.status_code == 200, r.text
    assert _greedy(client, "keep-me", TEXTS[0], max_tokens=6) == want


def test_path_loads_work_with_adapters_root(stack, client) -> None:
    run_dir = stack.run_dir
    source = stack.adapters[2]
    rel = str(Path(source.path).resolve().relative_to(Path(run_dir).resolve()))
    r = httpx.post(
        stack.urls["gateway"] + "/v1/load_lora_adapter",
        json={"lora_name": "from-path", "lora_path": rel},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    cards = {m.id: m for m in client.models.list().data}
    base = next(m for m in client.models.list().data if m.model_extra.get("parent") is None)
    assert base.model_extra["root"] == base.id
    card = cards["from-path"].model_extra
    assert (card["root"], card["parent"]) == (rel, base.id)  # as vLLM: the path it came from
    assert cards[source.name].model_extra["root"] == source.name  # uploaded: its name
    same = _greedy(client, source.name, TEXTS[1], max_tokens=6)
    assert _greedy(client, "from-path", TEXTS[1], max_tokens=6) == same
