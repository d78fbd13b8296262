"""One contract, two transports: the real ``Bus`` (on the nats-server fixture) and its in-memory
twin ``MemoryBus`` must behave alike, so tests written against the twin stay honest."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from loraplex.bus import Bus, BusTimeoutError, NoRespondersError, RawMessage, is_no_responders
from loraplex.bus_memory import MemoryBus, MemoryHub, subject_matches
from loraplex.protocol import CancelRequest, KVChunk, SubmitReply, encode

Connect = Callable[[str], Awaitable["Bus | MemoryBus"]]


@pytest.fixture(params=["nats", "memory"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """Open buses on one transport (closed at the end); all of one test see each other."""
    buses: list[Bus | MemoryBus] = []
    if request.param == "nats":
        url = request.getfixturevalue("nats_url")

        async def open_bus(name: str) -> Bus | MemoryBus:
            buses.append(await Bus.connect(url, name))
            return buses[-1]
    else:
        hub = MemoryHub()

        async def open_bus(name: str) -> Bus | MemoryBus:
            buses.append(hub.connect(name))
            return buses[-1]

    yield open_bus
    for b in buses:
        await b.close()


def _prefix() -> str:
    return f"contract.{uuid.uuid4().hex[:8]}"


async def _until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def test_twin_has_the_same_interface() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            n: inspect.signature(getattr(cls, n))
            for n in dir(cls)
            if not n.startswith("_") and callable(getattr(cls, n))
        }

    real, twin = public(Bus), public(MemoryBus)
    assert real.keys() == twin.keys()
    for name, sig in real.items():
        assert list(sig.parameters)[1:] == list(twin[name].parameters)[1:], name
    for prop in ("max_payload", "is_connected"):
        assert isinstance(getattr(MemoryBus, prop), property)


@pytest.mark.parametrize(
    ("pattern", "subject", "hit"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("*.b.>", "x.b.y", True),
        ("a.b", "a.c", False),
    ],
)
def test_subject_matching(pattern: str, subject: str, hit: bool) -> None:
    assert subject_matches(pattern, subject) is hit


async def test_publish_subscribe_wildcards_and_order(connect: Connect) -> None:
    p = _prefix()
    sub, pub = await connect("sub"), await connect("pub")
    one: list[str] = []
    rest: list[str] = []

    async def on_one(msg: CancelRequest) -> None:
        one.append(msg.request_id)

    async def on_rest(msg: CancelRequest) -> None:
        rest.append(msg.request_id)

    await sub.subscribe(f"{p}.*", on_one, CancelRequest)
    await sub.subscribe(f"{p}.>", on_rest, CancelRequest)
    await sub.flush()
    for i in range(20):
        await pub.publish(f"{p}.x", CancelRequest(f"r{i}"))
    await pub.publish(f"{p}.x.y", CancelRequest("deep"))
    await pub.flush()
    await _until(lambda: len(rest) == 21)
    assert rest == [f"r{i}" for i in range(20)] + ["deep"]
    assert one == [f"r{i}" for i in range(20)]


async def test_bad_messages_are_dropped_and_counted(connect: Connect) -> None:
    p = _prefix()
    sub, pub = await connect("sub"), await connect("pub")
    got: list[CancelRequest] = []

    async def on_msg(msg: CancelRequest) -> None:
        got.append(msg)

    await sub.subscribe(p, on_msg, CancelRequest)
    await sub.flush()
    await pub.publish_raw(p, b"not msgpack at all")
    await pub.publish(p, SubmitReply("x", True))  # a valid message of the wrong type
    await pub.publish(p, CancelRequest("ok"))
    await pub.flush()
    await _until(lambda: len(got) == 1)
    await _until(lambda: sub.dropped == 2)


async def test_queue_group_delivers_each_message_once(connect: Connect) -> None:
    p = _prefix()
    a, b, pub = await connect("a"), await connect("b"), await connect("pub")
    got: list[str] = []

    async def on_msg(msg: CancelRequest) -> None:
        got.append(msg.request_id)

    await a.subscribe(p, on_msg, CancelRequest, queue="workers")
    await b.subscribe(p, on_msg, CancelRequest, queue="workers")
    await a.flush()
    await b.flush()
    for i in range(10):
        await pub.publish(p, CancelRequest(f"r{i}"))
    await pub.flush()
    await _until(lambda: len(got) == 10)
    await asyncio.sleep(0.05)
    assert sorted(got) == sorted(f"r{i}" for i in range(10))


async def test_typed_request_reply(connect: Connect) -> None:
    p = _prefix()
    server, client = await connect("server"), await connect("client")

    async def answer(msg: CancelRequest) -> SubmitReply:
        return SubmitReply(msg.request_id, True, message=msg.reason)

    await server.serve(p, answer, CancelRequest)
    await server.flush()
    reply = await client.request(p, CancelRequest("r1", "hi"), SubmitReply, timeout=5)
    assert reply == SubmitReply("r1", True, message="hi")


async def test_no_responders_and_timeout(connect: Connect) -> None:
    p = _prefix()
    server, client = await connect("server"), await connect("client")
    with pytest.raises(NoRespondersError):
        await client.request(f"{p}.nobody", CancelRequest("r"), SubmitReply, timeout=2)

    async def silent(raw: RawMessage) -> None:
        pass

    await server.subscribe_raw(f"{p}.silent", silent)
    await server.flush()
    with pytest.raises(BusTimeoutError):
        await client.request(f"{p}.silent", CancelRequest("r"), SubmitReply, timeout=0.2)


async def test_raw_subscribe_and_respond(connect: Connect) -> None:
    p = _prefix()
    server, client = await connect("server"), await connect("client")
    chunks: list[bytes] = []
    payload = bytes(range(256)) * 64

    async def on_raw(raw: RawMessage) -> None:
        if raw.reply:
            await raw.respond(encode(SubmitReply("begin", True, message=raw.subject)))
        else:
            chunks.append(raw.data)

    await server.subscribe_raw(f"{p}.kv", on_raw, pending_bytes_limit=1 << 30)
    await server.flush()
    reply = await client.request(f"{p}.kv", CancelRequest("b"), SubmitReply, timeout=5)
    assert reply.message == f"{p}.kv"
    assert client.max_payload >= 1 << 20
    await client.publish(f"{p}.kv", KVChunk("b", 0, payload))
    await client.publish_raw(f"{p}.kv", b"raw bytes")
    await client.flush()
    await _until(lambda: len(chunks) == 2)
    assert chunks[1] == b"raw bytes"
    assert client.is_connected
    await client.close()
    assert not client.is_connected


async def test_a_publish_with_a_reply_subject_gets_the_answer_or_no_responders(
    connect: Connect,
) -> None:
    """What ``loraplex.acked`` relies on: an answer to a published message goes to its reply
    subject (one wildcard subscription takes every answer), and with nobody subscribed to the
    subject the server sends its no-responders status there instead."""
    p = _prefix()
    server, client = await connect("server"), await connect("client")
    answers: list[tuple[str, bytes, bool]] = []

    async def on_answer(raw: RawMessage) -> None:
        answers.append((raw.subject, raw.data, is_no_responders(raw)))

    async def on_request(raw: RawMessage) -> None:
        await raw.respond(b"ack " + raw.data)

    await client.subscribe_raw(f"{p}.inbox.*", on_answer)
    await server.subscribe_raw(f"{p}.served", on_request)
    await client.flush()
    await server.flush()
    await client.publish_raw(f"{p}.served", b"one", reply=f"{p}.inbox.1")
    await client.publish_raw(f"{p}.nobody", b"two", reply=f"{p}.inbox.2")
    await client.flush()
    await _until(lambda: len(answers) == 2)
    assert sorted(answers) == [(f"{p}.inbox.1", b"ack one", False), (f"{p}.inbox.2", b"", True)]
