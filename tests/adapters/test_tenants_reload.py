"""The tenants file re-read while running (``tenants_watch.py``): a change is taken, a bad version
keeps the last good one and says why without a key, a file briefly gone changes nothing, the
scheduler's weights follow, and the poll runs on its own in ``watching()``."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.tenants import AuthenticationError
from loraplex.tenants_watch import LiveTenants

FIRST = {"tenants": [{"name": "alice", "api_key": "sk-a1"}, {"name": "bob", "api_key": "sk-b1"}]}
SECOND = {
    "tenants": [
        {"name": "alice", "api_keys": ["sk-a2", "sk-a1"], "weight": 3},
        {"name": "carol", "api_key": "sk-c1"},
    ]
}


def write(path: Path, doc: object) -> None:
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "tenants.json"
    write(p, FIRST)
    return p


def test_a_change_is_taken(path: Path) -> None:
    live = LiveTenants(path)
    seen = []
    live.on_change(lambda t: seen.append(t.names))
    assert not live.check()  # unchanged bytes: nothing read
    write(path, SECOND)
    assert live.check()
    assert seen == [("alice", "carol")]
    assert live.authenticate("Bearer sk-a2").name == "alice"
    assert live.authenticate("Bearer sk-a1").name == "alice"  # the old key still works
    assert live.authenticate("Bearer sk-c1").name == "carol"
    with pytest.raises(AuthenticationError):
        live.authenticate("Bearer sk-b1")  # bob was removed
    assert not live.check() and live.reloads == 1


@pytest.mark.parametrize(
    "bad",
    ['{"tenants": [', {"tenants": [{"name": "x", "api_key": "sk-secret-9"}] * 2}, {"tenants": []}],
)
def test_a_bad_version_keeps_the_last_good_one(
    path: Path, bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    live = LiveTenants(path)
    write(path, bad)
    with caplog.at_level(logging.ERROR, "loraplex.tenants_watch"):
        assert not live.check()
    assert live.refused == 1 and live.current.names == ("alice", "bob")
    assert "keeping the last good one" in caplog.text and "sk-" not in caplog.text
    assert live.authenticate("Bearer sk-b1").name == "bob"
    assert not live.check() and live.refused == 1  # reported once, not at every poll
    write(path, SECOND)  # the fix is taken
    assert live.check() and live.current.names == ("alice", "carol")


def test_a_file_briefly_gone_changes_nothing(path: Path) -> None:
    live = LiveTenants(path)
    path.unlink()
    assert not live.check() and live.current.names == ("alice", "bob")
    write(path, FIRST)
    assert not live.check()  # the same bytes back


def test_open_mode_never_changes() -> None:
    live = LiveTenants(None)
    assert live.open_mode and not live.check()
    assert live.authenticate(None).name == "default"


def test_the_schedulers_weights_follow(path: Path) -> None:
    live = LiveTenants(path)
    service = SchedulerService(
        SchedulerSettings(nats_url="nats://unused:1"), live.current.weights()
    )
    service.follow_tenants(live)
    assert service.policy.weight("alice") == 1.0
    write(path, SECOND)
    live.check()
    assert service.policy.weight("alice") == 3.0
    assert service.policy.weights == {"alice": 3.0, "carol": 1.0}


async def test_watching_polls_on_its_own(path: Path) -> None:
    live = LiveTenants(path)
    async with live.watching(interval_s=0.05):
        write(path, SECOND)
        for _ in range(100):
            if live.reloads:
                break
            await asyncio.sleep(0.02)
    assert live.current.names == ("alice", "carol")
    write(path, FIRST)
    await asyncio.sleep(0.2)
    assert live.current.names == ("alice", "carol")  # the watch ended with the context


async def test_the_adapter_store_service_takes_a_changed_file(
    service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The standalone adapter store (its own app) re-reads the file as the gateway does."""
    import httpx

    monkeypatch.setenv("LORAPLEX_TENANTS_RELOAD_S", "0.05")
    carol = {"Authorization": "Bearer sk-carol-1"}
    async with service() as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/v1/adapters", headers=carol)).status_code == 401
        doc = json.loads((tmp_path / "tenants.json").read_text())
        doc["tenants"].append({"name": "carol", "api_key": "sk-carol-1"})
        (tmp_path / "tenants.json").write_text(json.dumps(doc))
        for _ in range(200):
            if (await http.get("/v1/adapters", headers=carol)).status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert (await http.get("/v1/adapters", headers=carol)).status_code == 200
