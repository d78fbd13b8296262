"""vLLM's unload keeps the weights: ``AdapterStore.set_served`` and ``AdapterInfo.served`` /
``source`` against a real redis-server."""

from __future__ import annotations

import os

from loraplex.adapters.store import AdapterStore

CONFIG = b'{"peft_type": "LORA", "r": 4}'
META = {"rank": 4, "alpha": 8.0, "targets": ("q_proj", "v_proj")}


async def test_unserved_adapter_keeps_its_weights_and_a_new_version_is_served(
    store: AdapterStore,
) -> None:
    weights = os.urandom(3000)
    reg = await store.register("one", "alice", CONFIG, weights, **META, source="dirs/one")
    assert reg.info.served and reg.info.source == "dirs/one"

    before = await store.set_served("alice/one", False)
    assert before is not None and before.served
    info = await store.get_for("alice", "one")  # still stored, still listed: only not served
    assert not info.served and info.source == "dirs/one" and info.version == reg.info.version
    assert [i.name for i in await store.list_for("alice")] == ["one"]
    assert await store.fetch_weights("alice/one") == (CONFIG, weights)
    assert info.to_json()["served"] is False and "source" not in info.to_json()

    again = await store.set_served("alice/one", False)
    assert again is not None and not again.served  # the caller tells "already unloaded"
    assert (await store.set_served("alice/one", True)) is not None
    assert (await store.get("alice/one")).served  # type: ignore[union-attr]

    await store.set_served("alice/one", False)
    reg = await store.register("one", "alice", CONFIG, weights, **META, replace=True)
    assert reg.info.served and reg.info.source == ""  # a multipart replace has no path
    assert await store.set_served("alice/nothing", False) is None
