"""``POST /v1/files`` takes one file: an upload with two ``file`` parts is a 400, not the last
part kept in silence (red team, round 3)."""

from __future__ import annotations

import httpx

from tests.gateway.conftest import ALICE


async def test_an_upload_with_two_files_is_a_400(gateway_factory, scheduler) -> None:  # noqa: ANN001
    raw = (
        b'--XX\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{}\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="b.jsonl"\r\n\r\n{}\r\n'
        b"--XX--\r\n"
    )
    headers = {**ALICE, "content-type": "multipart/form-data; boundary=XX"}
    async with gateway_factory(redis_url="") as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/v1/files", content=raw, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["param"] == "file", r.text
        one = raw.split(b'--XX\r\nContent-Disposition: form-data; name="file"; filename="b')[0]
        r = await http.post("/v1/files", content=one + b"--XX--\r\n", headers=headers)
        assert r.status_code == 200 and r.json()["filename"] == "a.jsonl", r.text
        assert (await http.get("/v1/files", headers=ALICE)).json()["data"][0]["bytes"] == 2
