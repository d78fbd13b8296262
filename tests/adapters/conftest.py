"""Fixtures for the adapter-store tests: a base-model config, PEFT adapter dirs, a store on the
session's real redis-server under a per-test key prefix, and the service on a real uvicorn."""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from loraplex.adapter_store.app import create_app
from loraplex.adapter_store.settings import Settings
from loraplex.adapters.store import AdapterStore
from loraplex.demo import TinyModelSpec, demo_model_spec, model_config, write_random_adapter
from loraplex.servers import free_port
from tests.uvicorn_server import serve_app

TENANTS = {
    "tenants": [
        {"name": "alice", "api_key": "sk-alice-secret", "weight": 1},
        {"name": "bob", "api_key": "sk-bob-secret", "weight": 2},
    ]
}
ALICE = {"Authorization": "Bearer sk-alice-secret"}
BOB = {"Authorization": "Bearer sk-bob-secret"}


@pytest.fixture(scope="session")
def spec() -> TinyModelSpec:
    return demo_model_spec()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, spec: TinyModelSpec) -> Path:
    d = tmp_path_factory.mktemp("base-model")
    (d / "config.json").write_text(json.dumps(model_config(spec)))
    return d


@pytest.fixture
def make_adapter(tmp_path: Path, spec: TinyModelSpec) -> Callable[..., Path]:
    """make_adapter(dir_name, rank=4, targets=("q_proj", "v_proj"), **kw) -> PEFT directory."""

    def make(name: str = "a", *, under: Path | None = None, **kw: object) -> Path:
        kw.setdefault("rank", 4)
        kw.setdefault("alpha", 8.0)
        kw.setdefault("targets", ("q_proj", "v_proj"))
        kw.setdefault("seed", zlib.crc32(name.encode()) % 1000)
        model_spec = kw.pop("model_spec", spec)
        path = (under or tmp_path / "src") / name
        write_random_adapter(path, model_spec, **kw)  # type: ignore[arg-type]
        return path

    return make


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[AdapterStore]:
    s = AdapterStore.from_url(redis_url, prefix=prefix)
    yield s
    await s.close()


async def keys_with(store: AdapterStore) -> set[str]:
    """Every Redis key under the store's prefix (SCAN over the keyspace)."""
    return {k.decode() async for k in store.redis.scan_iter(match=f"{store.keys.prefix}:*")}


def serve(settings: Settings) -> AbstractAsyncContextManager[str]:
    """Run the app on a real uvicorn server in this event loop; yields its base URL."""
    return serve_app(create_app(settings), "127.0.0.1", settings.port)


@pytest.fixture
def adapters_root(tmp_path: Path) -> Path:
    root = tmp_path / "adapters-root"
    root.mkdir()
    return root


@pytest.fixture
def service(
    tmp_path: Path,
    model_dir: Path,
    redis_url: str,
    nats_url: str,
    prefix: str,
    adapters_root: Path,
) -> Callable[..., AbstractAsyncContextManager[str]]:
    """``async with service(**overrides) as url:`` — tenants alice/bob unless overridden."""
    tenants = tmp_path / "tenants.json"
    tenants.write_text(json.dumps(TENANTS))

    def start(**overrides: object) -> AbstractAsyncContextManager[str]:
        base: dict[str, object] = {
            "model_dir": str(model_dir),
            "redis_url": redis_url,
            "nats_url": nats_url,
            "port": free_port(),
            "adapters_root": str(adapters_root),
            "max_lora_rank": 16,
            "max_adapter_mb": 1.0,
            "tenants_file": str(tenants),
            "redis_prefix": prefix,
        }
        base.update(overrides)
        return serve(Settings(**base))  # type: ignore[arg-type]

    return start
