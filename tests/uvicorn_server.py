"""Run an ASGI app on a real uvicorn server inside the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn


@asynccontextmanager
async def serve_app(app, host: str, port: int, **config: object) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    """Yields the base URL once the server listens; stops it on exit.  ``config``: more
    ``uvicorn.Config`` options (the gateway's ``http`` protocol)."""
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", **config)  # type: ignore[arg-type]
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
