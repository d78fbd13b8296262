"""A request with a body and no valid key is a 401 before any of its body is read
(``auth_first.py``): a client without a key cannot make the gateway hold a body."""

from __future__ import annotations

import asyncio
import json

from tests.gateway.conftest import ALICE_KEY


async def _post_head(port: int, key: str | None, length: int) -> bytes:
    """Send only a POST's headers (declaring ``length`` bytes of body, none sent) and return
    what the gateway answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    writer.write(
        (
            f"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"{auth}content-length: {length}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), timeout=3.0)
    except TimeoutError:
        return b""  # nothing yet: it waits for the body
    finally:
        writer.close()


async def test_no_key_is_a_401_before_the_body_and_a_key_waits_for_it(
    gateway_factory, scheduler
) -> None:  # noqa: ANN001
    async with gateway_factory() as url:
        port = int(url.rsplit(":", 1)[1])
        for key in (None, "sk-wrong"):
            answer = await _post_head(port, key, 1_000_000)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 401"), answer[:200]
            assert json.loads(body)["error"]["code"] == "invalid_api_key"
        assert await _post_head(port, ALICE_KEY, 1_000_000) == b""  # a tenant's: read on
