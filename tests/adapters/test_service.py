"""The adapter-store service on a real uvicorn server, real redis-server and nats-server, driven
with the official httpx client: validation answers, auth, tenancy, replace, size limit, path
registrations under the adapters root, NATS events, and the Python client."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loraplex.adapters.client import AdapterStoreClient
from loraplex.adapters.errors import AdapterExistsError, AdapterForbiddenError
from loraplex.adapters.store import AdapterStore
from loraplex.bus import Bus
from loraplex.errors import AdapterNotFoundError
from loraplex.protocol import AdapterEvent, Subjects
from loraplex.tenants import AuthenticationError
from loraplex.tooling.demo import TinyModelSpec

from .conftest import ALICE, BOB, keys_with

CFG, WTS = "adapter_config.json", "adapter_model.safetensors"


def files_of(path: Path, cfg: bytes | None = None, wts: bytes | None = None) -> list:
    return [
        ("files", (CFG, cfg if cfg is not None else (path / CFG).read_bytes(), "application/json")),
        ("files", (WTS, wts if wts is not None else (path / WTS).read_bytes(), "application/octet-stream")),
    ]  # fmt: skip


async def upload(
    http: httpx.AsyncClient, name: str, path: Path, headers: dict = ALICE, **form: str
) -> httpx.Response:
    data = {"name": name, **form}
    return await http.post("/v1/adapters", data=data, files=files_of(path), headers=headers)


def assert_error(resp: httpx.Response, status: int, message: str, param: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert message in err["message"], err["message"]
    if param is not None:
        assert err["param"] == param


async def test_roundtrip(service, make_adapter, store: AdapterStore) -> None:
    path = make_adapter("rt", rank=8, alpha=16.0, targets=("q_proj", "k_proj", "down_proj"))
    async with service() as url, httpx.AsyncClient(base_url=url) as http:
        r = await upload(http, "rt", path)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["object"] == "adapter" and body["owner"] == "alice"
        assert body["visibility"] == "private" and body["rank"] == 8 and body["alpha"] == 16.0
        assert body["targets"] == ["q_proj", "k_proj", "down_proj"]
        assert body["size_bytes"] == (path / WTS).stat().st_size
        assert (await http.get("/v1/adapters/rt", headers=ALICE)).json() == body
        listed = (await http.get("/v1/adapters", headers=ALICE)).json()
        assert listed["object"] == "list" and [a["name"] for a in listed["data"]] == ["rt"]
        # workers read straight from Redis, sha-verified
        assert await store.fetch_weights("alice/rt") == (
            (path / CFG).read_bytes(),
            (path / WTS).read_bytes(),
        )
        r = await http.delete("/v1/adapters/rt", headers=ALICE)
        assert r.json() == {"id": "rt", "object": "adapter.deleted", "deleted": True}
        assert_error(await http.get("/v1/adapters/rt", headers=ALICE), 404, "not found")
        assert await keys_with(store) <= {store.keys.version_counter("alice")}


async def test_health_and_ready(service) -> None:
    async with service() as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        r = await http.get("/ready")
        assert r.status_code == 200 and r.json()["redis"] is True
        assert_error(await http.get("/v1/nope"), 404, "Not Found")


async def test_auth_required(service, make_adapter) -> None:
    path = make_adapter("a")
    async with service() as url, httpx.AsyncClient(base_url=url) as http:
        for headers, msg in [
            ({}, "missing API key"),
            ({"Authorization": "Bearer sk-wrong"}, "incorrect API key"),
            ({"Authorization": "Token sk-alice-secret"}, "malformed"),
        ]:
            for resp in (
                await http.get("/v1/adapters", headers=headers),
                await upload(http, "a", path, headers=headers),
                await http.delete("/v1/adapters/a", headers=headers),
            ):
                assert_error(resp, 401, msg)
                assert resp.json()["error"]["code"] == "invalid_api_key"
                assert resp.headers["www-authenticate"] == "Bearer"
                assert "sk-" not in resp.text


async def test_open_mode_needs_no_key(service, make_adapter) -> None:
    async with service(tenants_file=None) as url, httpx.AsyncClient(base_url=url) as http:
        r = await upload(http, "open", make_adapter("open"), headers={})
        assert r.status_code == 201 and r.json()["owner"] == "default"
        assert [a["name"] for a in (await http.get("/v1/adapters")).json()["data"]] == ["open"]


def _wrong_model() -> TinyModelSpec:
    return TinyModelSpec(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2
    )


async def test_validation_failures(service, make_adapter, store: AdapterStore) -> None:
    good = make_adapter("good")
    cfg = json.loads((good / CFG).read_text())

    def form(name: str = "v", **kw: object) -> dict:
        return {
            "data": {"name": name, **kw.pop("data", {})},
            "files": kw.pop("files", files_of(good)),
        }

    cases: list[tuple[dict, int, str, str | None]] = [
        (form("bad name!"), 400, "invalid adapter name 'bad name!'", None),
        ({"data": {}, "files": files_of(good)}, 400, "missing adapter name", "name"),
        (form(files=files_of(good)[:1]), 400, f"missing file(s) {WTS}", "files"),
        (form(files=[("files", ("model.bin", b"x", "a/b")), *files_of(good)]), 400, "file 'model.bin' is a pickle", "files"),
        (form(files=[("files", ("model.gguf", b"x", "a/b")), *files_of(good)]), 400, "unexpected file 'model.gguf'", "files"),
        (form(files=[("weights", (WTS, b"x", "a/b"))]), 400, "under the form field 'files'", "files"),
        (form(files=[*files_of(good), files_of(good)[0]]), 400, f"{CFG} was sent twice", "files"),
        (form(data={"visiblity": "public"}), 400, "unknown form field 'visiblity'", "visiblity"),
        (form(data={"visibility": "everyone"}), 400, "visibility must be one of private, public", "visibility"),
        (form(data={"replace": "maybe"}), 400, "replace must be a boolean", "replace"),
        (form(files=files_of(good, cfg=b"{not json")), 400, f"{CFG} is not valid JSON", None),
        (form(files=files_of(good, cfg=json.dumps({**cfg, "peft_type": "IA3"}).encode())), 400, "peft_type 'IA3' is not LORA", None),
        (form(files=files_of(good, cfg=json.dumps({**cfg, "use_dora": True}).encode())), 400, "DoRA adapters are not supported", None),
        (form(files=files_of(good, cfg=json.dumps({**cfg, "r": 8}).encode())), 400, "has rank 4 but adapter_config.json says r=8", None),
        (form(files=files_of(good, wts=b"\x00garbage")), 400, "is not a valid safetensors file", None),
        (form(files=files_of(make_adapter("wrong", model_spec=_wrong_model()))), 400, "the base model needs A [r, 128]", None),
        (form(files=files_of(make_adapter("deep", rank=32))), 400, "rank 32 exceeds the server's max_lora_rank 16", None),
    ]  # fmt: skip
    async with service() as url, httpx.AsyncClient(base_url=url) as http:
        for kwargs, status, message, param in cases:
            resp = await http.post("/v1/adapters", headers=ALICE, **kwargs)
            assert_error(resp, status, message, param)
        assert_error(
            await http.post("/v1/adapters", headers=ALICE, content=b"x", params={}),
            400, "send multipart/form-data",
        )  # fmt: skip
        bad_json = await http.post(
            "/v1/adapters", headers={**ALICE, "content-type": "application/json"}, content=b"{"
        )
        assert_error(bad_json, 400, "body is not valid JSON")
        assert_error(await http.post("/v1/adapters", headers=ALICE, json={"name": "x", "path": "a", "extra": 1}), 400, "unknown field(s) extra")  # fmt: skip
        assert (await http.get("/v1/adapters", headers=ALICE)).json()["data"] == []
    assert await keys_with(store) <= {store.keys.version_counter("alice")}  # nothing stored


async def test_tenancy(service, make_adapter) -> None:
    path = make_adapter("t")
    async with service() as url, httpx.AsyncClient(base_url=url) as http:
        assert (await upload(http, "alices", path)).status_code == 201
        missing = await http.get("/v1/adapters/nosuch", headers=BOB)
        hidden = await http.get("/v1/adapters/alices", headers=BOB)
        assert_error(hidden, 404, "adapter 'alices' not found")
        assert hidden.json()["error"] == {
            **missing.json()["error"], "message": missing.json()["error"]["message"].replace("nosuch", "alices")
        }  # fmt: skip
        assert (await http.get("/v1/adapters", headers=BOB)).json()["data"] == []
        assert_error(await http.delete("/v1/adapters/alices", headers=BOB), 404, "not found")
        # names are scoped to their owner: bob gets his own "alices", as for an unused name
        unused = await upload(http, "unused", path, headers=BOB)
        mine = await upload(http, "alices", path, headers=BOB)
        assert mine.status_code == unused.status_code == 201
        assert mine.json() == {**unused.json(), "id": "alices", "name": "alices", "created": mine.json()["created"], "version": mine.json()["version"]}  # fmt: skip
        assert (await http.get("/v1/adapters/alices", headers=ALICE)).json()["owner"] == "alice"
        for name in ("alices", "unused"):
            assert (await http.delete(f"/v1/adapters/{name}", headers=BOB)).status_code == 200
        # made public: visible to bob, still not his to delete
        r = await upload(http, "alices", path, visibility="public", replace="true")
        assert r.status_code == 200 and r.json()["visibility"] == "public"
        seen = (await http.get("/v1/adapters/alices", headers=BOB)).json()
        assert (seen["owner"], seen["version"]) == ("public", None)  # no tenant, no count named
        own = (await http.get("/v1/adapters/alices", headers=ALICE)).json()
        assert (own["owner"], own["version"]) == ("alice", r.json()["version"])
        assert [a["name"] for a in (await http.get("/v1/adapters", headers=BOB)).json()["data"]] == ["alices"]  # fmt: skip
        assert_error(await http.delete("/v1/adapters/alices", headers=BOB), 403, "belongs to another tenant")  # fmt: skip
        assert (await http.delete("/v1/adapters/alices", headers=ALICE)).status_code == 200


async def test_conflict_replace_and_events(service, make_adapter, nats_url: str, store) -> None:
    one, two = make_adapter("one", rank=4), make_adapter("two", rank=8, targets=("o_proj",))
    bus = await Bus.connect(nats_url, "test-listener")
    events: asyncio.Queue[AdapterEvent] = asyncio.Queue()
    await bus.subscribe(Subjects.ADAPTER_EVENTS, events.put, expect=AdapterEvent)
    await bus.flush()
    try:
        async with service() as url, httpx.AsyncClient(base_url=url) as http:
            first = (await upload(http, "ev", one)).json()
            assert_error(await upload(http, "ev", two), 409, "already exists; pass replace=true")
            r = await upload(http, "ev", two, replace="true")
            assert r.status_code == 200
            second = r.json()
            assert second["rank"] == 8 and second["targets"] == ["o_proj"]
            assert second["version"] > first["version"] and second["sha256"] != first["sha256"]
            assert not await store.redis.exists(store.keys.blob("alice/ev", first["version"]))
            assert (await http.delete("/v1/adapters/ev", headers=ALICE)).status_code == 200
            got = [await asyncio.wait_for(events.get(), 5) for _ in range(3)]
    finally:
        await bus.close()
    assert [(e.kind, e.name, e.owner) for e in got] == [
        ("created", "ev", "alice"), ("replaced", "ev", "alice"), ("deleted", "ev", "alice")
    ]  # fmt: skip
    assert [(e.version, e.sha256) for e in got] == [
        (first["version"], first["sha256"]), (second["version"], second["sha256"]),
        (second["version"], second["sha256"]),
    ]  # fmt: skip
    assert events.empty()


async def test_size_limit(service, make_adapter, adapters_root: Path) -> None:
    small = make_adapter("small")  # ~28 KiB
    big = make_adapter("big", rank=8, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), under=adapters_root)  # fmt: skip
    async with service(max_adapter_mb=0.1) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await upload(http, "small", small)).status_code == 201
        r = await upload(http, "big", big)
        assert_error(r, 413, "exceeds the server's limit of 0.1 MiB")
        assert r.json()["error"]["code"] == "adapter_too_large"
        # a body far beyond the limit: refused while streaming, the answer still arrives
        huge = [
            ("files", (CFG, b"{}", "application/json")),
            ("files", (WTS, b"\0" * (8 << 20), "x/y")),
        ]
        assert_error(await http.post("/v1/adapters", data={"name": "huge"}, files=huge, headers=ALICE), 413, "limit")  # fmt: skip
        assert_error(await http.post("/v1/adapters", json={"name": "big", "path": "big"}, headers=ALICE), 413, "limit")  # fmt: skip
        names = [a["name"] for a in (await http.get("/v1/adapters", headers=ALICE)).json()["data"]]
        assert names == ["small"]


async def test_path_registration(
    service, make_adapter, adapters_root: Path, tmp_path: Path
) -> None:
    inside = make_adapter("inside", under=adapters_root / "team")
    outside = make_adapter("outside", under=tmp_path / "elsewhere")
    (adapters_root / "escape").symlink_to(outside, target_is_directory=True)
    mixed = adapters_root / "mixed"
    mixed.mkdir()
    (mixed / CFG).write_bytes((inside / CFG).read_bytes())
    (mixed / WTS).symlink_to(outside / WTS)

    async def post(http: httpx.AsyncClient, path: str, name: str = "p") -> httpx.Response:
        return await http.post("/v1/adapters", json={"name": name, "path": path}, headers=ALICE)

    async with service() as url, httpx.AsyncClient(base_url=url) as http:
        r = await post(http, "team/inside", "rel")
        assert r.status_code == 201 and r.json()["rank"] == 4, r.text
        r = await post(http, str(inside), "abs")
        assert r.status_code == 201, r.text
        for bad in ["../elsewhere/outside", "team/../../elsewhere/outside", str(outside), "/etc", "escape", "mixed", "/nonexistent/dir"]:  # fmt: skip
            resp = await post(http, bad)
            assert_error(resp, 403, "outside the server's adapters root")
            assert resp.json()["error"]["code"] == "path_not_allowed"
        assert_error(
            await post(http, "team/nosuch"), 400, "is not a directory under the adapters root"
        )
        assert_error(await post(http, "team"), 400, f"has no {CFG}")
        assert_error(await http.post("/v1/adapters", json={"name": "p"}, headers=ALICE), 400, "missing 'path'")  # fmt: skip
        listed = await http.post(
            "/v1/adapters", json={"name": "p", "path": ["team"]}, headers=ALICE
        )
        assert_error(listed, 400, "'path' must be a string, not list")  # sent, but not a string
        names = [a["name"] for a in (await http.get("/v1/adapters", headers=ALICE)).json()["data"]]
        assert names == ["abs", "rel"]
    async with service(adapters_root=None) as url, httpx.AsyncClient(base_url=url) as http:
        assert_error(await post(http, "team/inside"), 403, "path registration is disabled")


async def test_python_client(service, make_adapter) -> None:
    path = make_adapter("cli")
    async with service() as url:
        async with AdapterStoreClient(url, api_key="sk-alice-secret") as alice:
            info = await alice.upload_dir("cli", path, visibility="public")
            assert info.owner == "alice" and info.visibility == "public"
            assert await alice.get("cli") == info
            assert [i.name for i in await alice.list()] == ["cli"]
            with pytest.raises(AdapterExistsError, match="replace=true"):
                await alice.upload_dir("cli", path)
            assert (await alice.upload_dir("cli", path, replace=True)).version > info.version
            assert await alice.health()
            async with AdapterStoreClient(url, api_key="sk-bob-secret") as bob:
                with pytest.raises(AdapterForbiddenError):
                    await bob.delete("cli")
            await alice.delete("cli")
            with pytest.raises(AdapterNotFoundError):
                await alice.get("cli")
        async with AdapterStoreClient(url, api_key="sk-nope") as nobody:
            with pytest.raises(AuthenticationError):
                await nobody.list()


def test_module_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "loraplex.adapter_store", "--help"], capture_output=True, text=True, check=True
    ).stdout  # fmt: skip
    for flag in ("--redis-url", "--nats-url", "--model", "--adapters-root", "--max-lora-rank", "--max-adapter-mb", "--tenants"):  # fmt: skip
        assert flag in out
