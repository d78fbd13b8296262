"""vLLM-compatible routes: ``/tokenize``, ``/detokenize``, ``/v1/load_lora_adapter`` and
``/v1/unload_lora_adapter`` (httpx, real NATS and Redis, the fake scheduler where a chat request
is submitted)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import nats
import pytest

import loraplex
from loraplex.protocol import AdapterEvent, Subjects, decode
from loraplex.text.tokenizer import Tokenizer
from loraplex.tooling.demo import DemoModelInfo
from tests.gateway.conftest import (
    ALICE,
    BOB,
    MODEL_ID,
    FakeScheduler,
    GatewayFactory,
    Plan,
    register_adapter,
)
from tests.gateway.test_errors import assert_error

PROMPT = "Hello, world! How are you today?"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "a story."}]},
    {"role": "assistant", "content": "Once.", "name": "narrator"},
    {"role": "user", "content": "More."},
]  # fmt: skip
LOAD, UNLOAD = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"


@pytest.fixture
async def http(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE, timeout=30) as client:
        yield client


@pytest.fixture
async def adapter_gateway(
    gateway_factory: GatewayFactory, demo: DemoModelInfo
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose ``--adapters-root`` holds the demo adapters (``demo-lora-0``, ...)."""
    root = demo.adapters[0].path.parent
    async with (
        gateway_factory(adapters_root=str(root)) as url,
        httpx.AsyncClient(base_url=url, headers=ALICE, timeout=30) as client,
    ):
        yield client


async def test_tokenize_prompt_is_the_tokenizers_ids(
    http: httpx.AsyncClient, tokenizer: Tokenizer
) -> None:
    r = await http.post("/tokenize", json={"model": MODEL_ID, "prompt": PROMPT})
    assert r.status_code == 200, r.text
    ids = tokenizer.encode(PROMPT)
    assert r.json() == {"count": len(ids), "max_model_len": 256, "tokens": ids, "token_strs": None}

    plain = tokenizer.encode(PROMPT, add_special_tokens=False)
    assert plain != ids  # the demo tokenizer adds BOS: the flag is really honoured
    r = await http.post("/tokenize", json={"prompt": PROMPT, "add_special_tokens": False})
    assert r.json()["tokens"] == plain  # no model: the base model, as in vLLM

    r = await http.post("/tokenize", json={"prompt": PROMPT, "return_token_strs": True})
    assert r.json()["token_strs"] == [tokenizer.id_to_token(t) for t in ids]


async def test_tokenize_chat_is_what_the_chat_route_submits(
    http: httpx.AsyncClient, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.plan = lambda _: Plan(tokens=[5, 6])
    r = await http.post(
        "/v1/chat/completions", json={"model": MODEL_ID, "messages": MESSAGES, "max_tokens": 4}
    )
    assert r.status_code == 200, r.text
    submitted = scheduler.submits[-1].prompt_token_ids

    r = await http.post("/tokenize", json={"model": MODEL_ID, "messages": MESSAGES})
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == submitted and r.json()["count"] == len(submitted)

    r = await http.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False})
    without = r.json()["tokens"]
    assert without != submitted and submitted[: len(without)] == without

    r = await http.post("/tokenize", json={"messages": MESSAGES, "add_special_tokens": True})
    assert r.json()["tokens"] == [tokenizer.bos_token_id, *submitted]  # the template has a BOS


async def test_detokenize_round_trips(http: httpx.AsyncClient, tokenizer: Tokenizer) -> None:
    ids = (await http.post("/tokenize", json={"prompt": PROMPT})).json()["tokens"]
    r = await http.post("/detokenize", json={"model": MODEL_ID, "tokens": ids})
    assert r.status_code == 200, r.text
    assert r.json() == {"prompt": f"{tokenizer.bos_token}{PROMPT}"}  # special tokens kept (vLLM)
    plain = await http.post("/tokenize", json={"prompt": PROMPT, "add_special_tokens": False})
    r = await http.post("/detokenize", json={"tokens": plain.json()["tokens"]})
    assert r.json()["prompt"] == PROMPT

    chat = (await http.post("/tokenize", json={"messages": MESSAGES})).json()["tokens"]
    text = (await http.post("/detokenize", json={"tokens": chat})).json()["prompt"]
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story."},
         {"role": "assistant", "content": "Once.", "name": "narrator"}, {"role": "user", "content": "More."}]
    )  # fmt: skip
    assert text == rendered and "<|im_start|>" in text


@pytest.mark.parametrize("bad", [[5, 1024], [-1], [3, 2**40]])
async def test_detokenize_ids_outside_the_vocabulary_are_400(
    http: httpx.AsyncClient, tokenizer: Tokenizer, bad: list[int]
) -> None:
    assert tokenizer.vocab_size == 1024
    r = await http.post("/detokenize", json={"model": MODEL_ID, "tokens": bad})
    err = assert_error(r, 400, param="tokens", code="invalid_token_id", says=str(bad[-1]))
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("bad", [[True], [5, False], [1.0], ["7"]])
async def test_detokenize_takes_integers_only(http: httpx.AsyncClient, bad: list[object]) -> None:
    """JSON's true is not token 1, nor "7" token 7 (pydantic's lax ints took them)."""
    r = await http.post("/detokenize", json={"model": MODEL_ID, "tokens": bad})
    assert_error(r, 400, param=f"tokens.{len(bad) - 1}")
    prompt = await http.post("/tokenize", json={"prompt": bad})
    assert prompt.status_code == 400, prompt.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL_ID}, "prompt"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "continue_final_message": True}, "continue_final_message"),
        ({"messages": [{"role": "user", "content": "x"}], "chat_template": "{{ x }}"}, "chat_template"),
        ({"prompt": 5}, "prompt"),
    ],
)  # fmt: skip
async def test_tokenize_bad_bodies_are_400(http: httpx.AsyncClient, body: dict, param: str) -> None:
    assert_error(await http.post("/tokenize", json=body), 400, param=param)


async def test_unknown_model_is_404_and_auth_is_required(
    http: httpx.AsyncClient, demo: DemoModelInfo, tokenizer: Tokenizer
) -> None:
    for path, body in [("/tokenize", {"prompt": PROMPT}), ("/detokenize", {"tokens": [5]})]:
        r = await http.post(path, json={**body, "model": "gpt-17"})
        assert_error(r, 404, code="model_not_found", param="model", says="gpt-17")
        assert_error(await http.post(path, json=body, headers={"Authorization": ""}), 401)

    # an adapter is a model for the tenants that may use it, and only for them
    r = await register_adapter(http, demo.adapters[0].path, "alice-only", ALICE)
    assert r.status_code == 201, r.text
    r = await http.post("/tokenize", json={"model": "alice-only", "prompt": PROMPT})
    assert r.status_code == 200 and r.json()["tokens"] == tokenizer.encode(PROMPT)
    r = await http.post("/tokenize", json={"model": "alice-only", "prompt": PROMPT}, headers=BOB)
    assert_error(r, 404, code="model_not_found")


async def test_load_and_unload_lora_adapter_round_trip(
    adapter_gateway: httpx.AsyncClient, demo: DemoModelInfo
) -> None:
    http = adapter_gateway
    first, second = demo.adapters
    load = {"lora_name": "vl", "lora_path": first.path.name}
    r = await http.post(LOAD, json=load)
    assert r.status_code == 200, r.text
    assert r.text == "Success: LoRA adapter 'vl' added successfully."
    info = (await http.get("/v1/adapters/vl")).json()
    assert (info["owner"], info["rank"], info["version"]) == ("alice", first.rank, 1)
    assert "vl" in {m["id"] for m in (await http.get("/v1/models")).json()["data"]}
    r = await http.post("/tokenize", json={"model": "vl", "prompt": PROMPT})
    assert r.status_code == 200, r.text

    # already loaded: vLLM's 400 (the adapter routes say 409), same message and code
    assert_error(await http.post(LOAD, json=load), 400, code="adapter_exists", param="lora_name")
    # bob's "vl" is his own adapter: names are scoped to their owner
    r = await http.post(LOAD, json={**load, "lora_path": second.path.name}, headers=BOB)
    assert r.status_code == 200, r.text
    r = await http.post(LOAD, json={**load, "lora_path": second.path.name, "load_inplace": True})
    assert r.status_code == 200, r.text
    info = (await http.get("/v1/adapters/vl")).json()
    assert (info["rank"], info["version"]) == (second.rank, 2)

    assert (await http.post(UNLOAD, json={"lora_name": "vl"}, headers=BOB)).status_code == 200
    r = await http.post(UNLOAD, json={"lora_name": "vl"}, headers=BOB)
    assert_error(r, 404, code="adapter_not_found", says="is not loaded")
    assert (await http.get("/v1/adapters/vl")).json()["owner"] == "alice"
    r = await http.post(UNLOAD, json={"lora_name": "vl"})
    assert r.status_code == 200, r.text
    assert r.text == "Success: LoRA adapter 'vl' removed successfully."
    # unload only stops serving it: the weights stay (DELETE /v1/adapters/{name} deletes)
    kept = (await http.get("/v1/adapters/vl")).json()
    assert kept["served"] is False and (kept["version"], kept["sha256"]) == (2, info["sha256"])
    assert "vl" not in {m["id"] for m in (await http.get("/v1/models")).json()["data"]}
    r = await http.post("/tokenize", json={"model": "vl", "prompt": PROMPT})
    assert_error(r, 404, code="model_not_found")
    assert_error(await http.get("/v1/models/vl"), 404, code="model_not_found")
    r = await http.post(UNLOAD, json={"lora_name": "vl"})
    assert_error(r, 404, code="adapter_not_found", says="vl")

    # load by name serves the stored weights again; a second load is vLLM's "already loaded"
    r = await http.post(LOAD, json={"lora_name": "vl"})
    assert r.status_code == 200, r.text
    again = (await http.get("/v1/adapters/vl")).json()
    assert again["served"] is True and (again["version"], again["sha256"]) == (2, info["sha256"])
    assert (await http.post("/tokenize", json={"model": "vl", "prompt": PROMPT})).status_code == 200
    r = await http.post(LOAD, json={"lora_name": "vl"})
    assert_error(r, 400, code="adapter_exists", param="lora_name", says="already loaded")
    # an unloaded adapter loaded from a path gets that path's weights as its new version
    await http.post(UNLOAD, json={"lora_name": "vl"})
    assert (await http.post(LOAD, json=load)).status_code == 200
    info = (await http.get("/v1/adapters/vl")).json()
    assert (info["rank"], info["version"], info["served"]) == (first.rank, 3, True)

    assert (await http.delete("/v1/adapters/vl")).status_code == 200
    assert_error(await http.get("/v1/adapters/vl"), 404, code="adapter_not_found")
    assert_error(await http.post(LOAD, json={"lora_name": "vl"}), 400, param="lora_path")
    assert_error(await http.post(UNLOAD, json={"lora_name": "vl"}), 404, code="adapter_not_found")


async def test_unload_keeps_an_uploaded_adapter_and_tells_the_workers(
    adapter_gateway: httpx.AsyncClient, demo: DemoModelInfo, nats_url: str
) -> None:
    http = adapter_gateway
    events: list[AdapterEvent] = []
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.subscribe(Subjects.ADAPTER_EVENTS)
        await nc.flush()
        r = await register_adapter(http, demo.adapters[1].path, "mp", ALICE)
        assert r.status_code == 201, r.text
        sha = r.json()["sha256"]
        assert (await http.post(UNLOAD, json={"lora_name": "mp"})).status_code == 200
        assert (await http.post(LOAD, json={"lora_name": "mp"})).status_code == 200
        while len(events) < 3:
            events.append(decode((await sub.next_msg(timeout=5)).data, AdapterEvent))
    finally:
        await nc.close()
    assert [(e.kind, e.owner, e.name) for e in events] == [
        ("created", "alice", "mp"), ("unloaded", "alice", "mp"), ("loaded", "alice", "mp"),
    ]  # fmt: skip
    info = (await http.get("/v1/adapters/mp")).json()
    assert info["sha256"] == sha and info["served"] is True
    cards = {m["id"]: m for m in (await http.get("/v1/models")).json()["data"]}
    assert (cards["mp"]["root"], cards["mp"]["parent"]) == ("mp", MODEL_ID)  # no path: its name
    assert (cards[MODEL_ID]["root"], cards[MODEL_ID]["parent"]) == (MODEL_ID, None)


async def test_model_cards_show_a_path_only_to_its_owner(
    adapter_gateway: httpx.AsyncClient, demo: DemoModelInfo
) -> None:
    http = adapter_gateway
    path = demo.adapters[0].path.name
    body = {"name": "shared", "path": path, "visibility": "public"}
    assert (await http.post("/v1/adapters", json=body)).status_code == 201
    r = await http.post(LOAD, json={"lora_name": "mine", "lora_path": path}, headers=BOB)
    assert r.status_code == 200, r.text

    alice = {m["id"]: m for m in (await http.get("/v1/models")).json()["data"]}
    bob = {m["id"]: m for m in (await http.get("/v1/models", headers=BOB)).json()["data"]}
    assert (alice["shared"]["root"], alice["shared"]["parent"]) == (path, MODEL_ID)
    assert (bob["shared"]["root"], bob["shared"]["parent"]) == ("shared", MODEL_ID)
    assert bob["mine"]["root"] == path and "mine" not in alice
    assert (await http.get("/v1/models/shared", headers=BOB)).json()["root"] == "shared"
    # only the owner may unload it (vLLM's 400 for the adapter routes' 403), and nobody else's
    # load by name serves anything
    r = await http.post(UNLOAD, json={"lora_name": "shared"}, headers=BOB)
    assert_error(r, 400, code="adapter_forbidden", param="lora_name")
    assert_error(await http.post(LOAD, json={"lora_name": "shared"}, headers=BOB), 400)
    assert "shared" in {m["id"] for m in (await http.get("/v1/models", headers=BOB)).json()["data"]}


async def test_load_lora_adapter_refusals(
    adapter_gateway: httpx.AsyncClient, demo: DemoModelInfo
) -> None:
    http = adapter_gateway
    outside = str(demo.model_dir)  # the model folder: above the adapters root
    r = await http.post(LOAD, json={"lora_name": "x", "lora_path": outside})
    assert_error(r, 400, code="path_not_allowed", param="lora_path", says="outside")
    r = await http.post(LOAD, json={"lora_name": "x", "lora_path": "nosuch"})
    assert_error(r, 400, code="invalid_adapter", says="is not a directory")
    r = await http.post(LOAD, json={"lora_name": "bad name!", "lora_path": "demo-lora-0"})
    assert_error(r, 400, code="invalid_adapter")
    assert_error(await http.post(LOAD, json={"lora_name": "x"}), 400, param="lora_path")
    assert_error(await http.post(UNLOAD, json={}), 400, param="lora_name")
    r = await http.post(
        LOAD, json={"lora_name": "x", "lora_path": "demo-lora-0"}, headers={"Authorization": ""}
    )
    assert_error(r, 401)
    assert (await http.get("/v1/adapters")).json()["data"] == []


async def test_load_lora_adapter_without_adapters_root_or_store(
    gateway_factory: GatewayFactory, http: httpx.AsyncClient
) -> None:
    body = {"lora_name": "x", "lora_path": "demo-lora-0"}
    r = await http.post(LOAD, json=body)  # no --adapters-root: path registration is off
    assert_error(r, 400, code="path_not_allowed", says="disabled")
    async with (
        gateway_factory(redis_url="") as url,
        httpx.AsyncClient(base_url=url, headers=ALICE) as client,
    ):
        assert_error(await client.post(LOAD, json=body), 503, code="store_unavailable")
        assert_error(await client.post(UNLOAD, json={"lora_name": "x"}), 503)
        assert (await client.post("/tokenize", json={"prompt": PROMPT})).status_code == 200


async def test_vllm_sampling_extensions_reach_the_scheduler(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    """``min_tokens``, ``include_stop_str_in_output``, ``skip_special_tokens`` travel in the
    SUBMIT's sampling; ``truncate_prompt_tokens`` keeps the prompt's last k tokens (echo shows
    those); ``/version`` answers."""
    prompt = "Hello, world! How are you today?"
    ids = tokenizer.encode(prompt)
    body = {
        "model": MODEL_ID, "prompt": prompt, "max_tokens": 4, "min_tokens": 2,
        "include_stop_str_in_output": True, "skip_special_tokens": False,
        "truncate_prompt_tokens": 3, "echo": True,
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        sent = scheduler.submits[-1]
        assert sent.prompt_token_ids == ids[-3:]
        s = sent.sampling
        assert (s.min_tokens, s.include_stop_str_in_output, s.skip_special_tokens) == (
            2,
            True,
            False,
        )
        assert r.json()["choices"][0]["text"].startswith(tokenizer.decode(ids[-3:]))
        chat = {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": prompt}],
            "truncate_prompt_tokens": 2,
        }
        assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
        assert len(scheduler.submits[-1].prompt_token_ids) == 2
        bad = await http.post("/v1/completions", json={**body, "truncate_prompt_tokens": 0})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "truncate_prompt_tokens"
        version = await http.get("/version")
        assert version.status_code == 200 and version.json() == {"version": loraplex.__version__}


async def test_chat_template_fields(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    """vLLM's ``add_generation_prompt`` and ``continue_final_message`` are honoured on chat and
    /tokenize; a per-request ``chat_template`` is refused, not ignored."""
    messages = [{"role": "user", "content": "Hi"}]
    prefilled = [*messages, {"role": "assistant", "content": "Sure, the answer is"}]
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        body = {"model": MODEL_ID, "messages": messages, "add_generation_prompt": False}
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        assert scheduler.submits[-1].prompt_token_ids == tokenizer.encode_chat(messages, False)
        go_on = {"continue_final_message": True, "add_generation_prompt": False}
        body = {"model": MODEL_ID, "messages": prefilled, **go_on}
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        sent = scheduler.submits[-1].prompt_token_ids
        text = tokenizer.apply_chat_template(prefilled, False)
        assert tokenizer.decode(sent, False) == text[: text.rindex("is") + 2]  # no turn end
        r = await http.post("/tokenize", json={"messages": prefilled, **go_on})
        assert r.json()["tokens"] == sent
        for bad in (
            {"chat_template": "{{ messages }}"},
            {"continue_final_message": True},  # with the default add_generation_prompt
            {**go_on, "messages": [*messages, {"role": "assistant", "content": " "}]},
        ):
            r = await http.post(
                "/v1/chat/completions", json={"model": MODEL_ID, "messages": messages, **bad}
            )
            assert_error(r, 400, param=next(iter(bad)) if "messages" not in bad else None)


@pytest.mark.parametrize(("field", "value"), [("use_beam_search", True), ("priority", 5)])
async def test_vllm_fields_not_served_are_refused(
    gateway: str, scheduler: FakeScheduler, field: str, value: object
) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        for path, body in (
            ("/v1/completions", {"model": MODEL_ID, "prompt": "Hi"}),
            (
                "/v1/chat/completions",
                {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}]},
            ),
        ):
            assert_error(await http.post(path, json={**body, field: value}), 400, param=field)
    assert scheduler.submits == []
