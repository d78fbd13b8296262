"""Raw-socket helpers for the slow-client tests: send exactly what a test says, when it says,
and read what the gateway answers until it closes the connection."""

from __future__ import annotations

import asyncio
import json
from typing import Any

BOUND_S = 20.0  # only so a regression fails instead of hanging


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


def head(method: str, path: str, *headers: str) -> bytes:
    """A request line and headers, ended by the blank line."""
    return ("\r\n".join([f"{method} {path} HTTP/1.1", "Host: t", *headers]) + "\r\n\r\n").encode()


async def read_until_closed(reader: asyncio.StreamReader, bound_s: float = BOUND_S) -> bytes:
    """Everything the server sends until it closes; AssertionError if it has not within
    ``bound_s`` (a reset after its answer counts as closed)."""
    got = bytearray()
    try:
        async with asyncio.timeout(bound_s):
            while chunk := await reader.read(65536):
                got += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {bound_s} s; got {bytes(got)[:200]!r}") from None
    except ConnectionResetError:
        pass
    return bytes(got)


def answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of one HTTP/1.1 answer."""
    top, _, body = raw.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    size = int(headers.get("content-length", len(body)))
    return status, headers, json.loads(body[:size]) if body else None


def multipart_parts(boundary: str) -> tuple[bytes, bytes]:
    """The start and end of a ``/v1/files`` form (its file's bytes go between)."""
    start = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return start, f"\r\n--{boundary}--\r\n".encode()
