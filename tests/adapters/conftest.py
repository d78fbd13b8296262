"""Fixtures for the adapter-store tests: a base-model config, PEFT adapter dirs, a store on the
session's real redis-server under a per-test key prefix, and the service on a real uvicorn.

For the adapter-paging tests (``test_paging_*.py``): the demo model with its local adapters,
the offline reference outputs, and the per-test paging harness ``h`` (see ``paging_helpers``)."""

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
from loraplex.adapters.registration.config import RegistrationConfig
from loraplex.adapters.registration.events import EventPublisher
from loraplex.adapters.registration.registrar import Registrar
from loraplex.adapters.store import AdapterStore
from loraplex.bus import Bus
from loraplex.model.config import ModelConfig
from loraplex.tooling.demo import (
    DemoModelInfo,
    TinyModelSpec,
    demo_model_spec,
    model_config,
    write_demo_model,
    write_random_adapter,
)
from loraplex.tooling.ports import free_port
from tests.adapters.paging_helpers import ADAPTERS, TENANT, Gateway, Harness, Reference, until
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
        port = base.pop("port")
        return serve(Settings(RegistrationConfig(**base), port=port))  # type: ignore[arg-type]

    return start


# ---- adapter paging (test_paging_*.py): model, adapters, offline reference, harness ------
@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoModelInfo:
    return write_demo_model(tmp_path_factory.mktemp("paging-model"), num_adapters=0)


@pytest.fixture(scope="module")
def adapter_dirs(demo: DemoModelInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paging-adapters")
    for key, (rank, targets, seed) in ADAPTERS.items():
        write_random_adapter(
            root / key, demo.spec, rank=rank, alpha=2.0 * rank, targets=targets, seed=seed
        )
    return {key: root / key for key in ADAPTERS}


@pytest.fixture(scope="module")
def ref(demo: DemoModelInfo, adapter_dirs: dict[str, Path]) -> Reference:
    return Reference(demo, adapter_dirs)


@pytest.fixture
async def h(
    demo: DemoModelInfo, adapter_dirs: dict[str, Path], nats_url: str, redis_url: str
) -> AsyncIterator[Harness]:
    store = AdapterStore.from_url(redis_url)  # the default prefix: the one workers read
    events = EventPublisher(nats_url, name="paging-test-store")
    events.start()
    await until(lambda: events.connected, what="event publisher connected")
    registrar = Registrar(store, ModelConfig.from_dir(demo.model_dir), 64, events)
    bus = await Bus.connect(nats_url, "paging-test-gateway")
    gateway = Gateway(bus)
    await gateway.start()
    harness = Harness(demo, adapter_dirs, nats_url, redis_url, registrar, gateway)
    try:
        yield harness
    finally:
        for key in ADAPTERS:  # leave the shared Redis as we found it
            if await store.get(harness.name(key)) is not None:
                await store.delete_for(TENANT.name, harness.store_name(key))
        await bus.close()
        await events.close()
        await store.close()
