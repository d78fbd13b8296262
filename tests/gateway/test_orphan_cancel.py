"""A token delta for a request the gateway no longer has (its cancel was lost, or it outlived an
error the client already got) makes the gateway ask the scheduler again to cancel it, at most once
a second per request; a finished request's late copy of its last delta does not.  Real uvicorn
and nats-server; the deltas are published by the test as a worker would."""

from __future__ import annotations

import asyncio
import uuid

import nats

from loraplex.gateway.streams import StreamRouter
from loraplex.protocol import CancelRequest, Subjects, TokenDelta, decode, encode
from tests.gateway.conftest import GatewayFactory


async def _until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_deltas_for_a_request_no_longer_open_are_cancelled_again(
    gateway_factory: GatewayFactory, nats_url: str
) -> None:
    gateway_id = f"gw-{uuid.uuid4().hex[:8]}"
    cancels: list[CancelRequest] = []
    nc = await nats.connect(nats_url)

    async def on_cancel(msg) -> None:  # type: ignore[no-untyped-def]
        cancels.append(decode(msg.data, CancelRequest))

    await nc.subscribe(Subjects.CANCEL, cb=on_cancel)
    await nc.flush()

    async def delta(rid: str, finish: str | None = None) -> None:
        await nc.publish(Subjects.stream(gateway_id), encode(TokenDelta(rid, [7], "x", finish)))
        await nc.flush()

    try:
        async with gateway_factory(gateway_id=gateway_id):
            for _ in range(4):  # four steps of a request that still runs somewhere
                await delta("ghost")
            await delta("done-long-ago", "length")  # a resent last delta: nothing to stop
            await _until(lambda: len(cancels) >= 1)
            await asyncio.sleep(0.3)  # room for more cancels that must not come
            assert [c.request_id for c in cancels] == ["ghost"]
            await asyncio.sleep(0.8)  # past the one-second gap: asked again
            await delta("ghost")
            await _until(lambda: len(cancels) >= 2)
            assert [c.request_id for c in cancels] == ["ghost", "ghost"]
    finally:
        await nc.close()


async def test_deltas_already_on_their_way_when_the_gateway_cancels_are_not_cancelled_twice() -> (
    None
):
    """A request the gateway closes with a cancel of its own (the client hung up): the deltas
    the worker sent before it saw that cancel are orphans, but not to cancel again within the
    gap.  One closed after its workers were done (no cancel sent) still is."""
    asked: list[str] = []

    async def cancel(rid: str, reason: str) -> None:
        asked.append(rid)

    router = StreamRouter()
    router.bind_cancel(cancel)
    for rid in ("hung-up", "finished"):
        router.open(rid)
    router.close("hung-up", cancelled=True)
    router.close("finished")
    for rid in ("hung-up", "hung-up", "finished"):
        await router.dispatch(TokenDelta(rid, [7], "x"))
    assert asked == ["finished"] and router.orphans == 3
