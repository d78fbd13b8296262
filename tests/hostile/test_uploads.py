"""Uploads as PEFT writes them are accepted; a tenant's uploads beyond its concurrent limit get a
429 at once (before their bodies are read), without touching the other tenant's uploads."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

from tests.hostile.adapter_files import README
from tests.hostile.cases import CaseContext
from tests.hostile.harness import (
    ALPHA,
    BETA,
    UPLOADS_PER_TENANT,
    HostileStack,
    assert_openai_error,
    auth,
)

SAVE_PRETRAINED_README = b"---\nlibrary_name: peft\n---\n# Model card\n"


def test_save_pretrained_folder_uploads_as_is(hs: HostileStack, ctx: CaseContext):
    folder = ctx.template.with_extras({README: SAVE_PRETRAINED_README})
    with hs.http(BETA) as beta:
        r = beta.post("/v1/adapters", **folder.multipart(ctx.fresh_name()))
        assert r.status_code == 201, r.text
        name = ctx.fresh_name()
        folder.write(ctx.adapters_root / name)
        r = beta.post("/v1/adapters", json={"name": name, "path": name})
        assert r.status_code == 201, r.text
        served = beta.post("/v1/completions", json={"model": name, "prompt": "Hi", "max_tokens": 2})
        assert served.status_code == 200, served.text
    hs.assert_healthy(ALPHA)


class HeldUpload:
    """A multipart upload over a raw connection that sends its headers and half of its body, then
    waits: it can read an answer the server sends before the body is complete."""

    def __init__(self, hs: HostileStack, tenant: str, files: dict) -> None:  # type: ignore[type-arg]
        req = httpx.Request("POST", hs.base + "/v1/adapters", headers=auth(tenant), **files)
        self.body = req.read()
        url = urlsplit(hs.base)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        head = [
            "POST /v1/adapters HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Authorization: {req.headers['authorization']}",
            f"Content-Type: {req.headers['content-type']}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
        ]
        self.head = ("\r\n".join(head) + "\r\n\r\n").encode()

    async def start(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.head + self.body[: len(self.body) // 2])
        await self.writer.drain()
        self.answer = asyncio.create_task(self._read_answer())

    async def finish(self) -> tuple[int, bytes]:
        self.writer.write(self.body[len(self.body) // 2 :])
        await self.writer.drain()
        return await self.answer

    async def _read_answer(self) -> tuple[int, bytes]:
        data = await self.reader.read()  # Connection: close
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        self.writer.close()
        return status, body


def as_response(status: int, body: bytes) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": "application/json"})


async def test_uploads_beyond_the_tenant_limit_get_429(hs: HostileStack, ctx: CaseContext):
    over = 2
    held = [
        HeldUpload(hs, BETA, ctx.template.multipart(ctx.fresh_name()))
        for _ in range(UPLOADS_PER_TENANT + over)
    ]
    for upload in held:
        await upload.start()
    # The uploads beyond the limit are answered while every body is still incomplete.
    deadline = asyncio.get_running_loop().time() + 30
    while sum(u.answer.done() for u in held) < over:
        assert asyncio.get_running_loop().time() < deadline, "no 429 while the uploads were held"
        await asyncio.sleep(0.05)
    refused = [u for u in held if u.answer.done()]
    assert len(refused) == over, "more uploads answered than the limit leaves out"
    for u in refused:
        err = assert_openai_error(as_response(*u.answer.result()), (429,))
        assert "upload" in err["message"].lower(), err
    # Meanwhile the other tenant uploads as usual.
    async with httpx.AsyncClient(base_url=hs.base, headers=auth(ALPHA), timeout=60) as alpha:
        r = await alpha.post("/v1/adapters", **ctx.template.multipart(ctx.fresh_name()))
        assert r.status_code == 201, r.text
    for u in held:
        if u not in refused:
            status, body = await u.finish()
            assert status == 201, body[:400]
    # The slots are free again.
    async with httpx.AsyncClient(base_url=hs.base, headers=auth(BETA), timeout=60) as beta:
        r = await beta.post("/v1/adapters", **ctx.template.multipart(ctx.fresh_name()))
        assert r.status_code == 201, r.text
    await asyncio.to_thread(hs.assert_healthy, ALPHA)
