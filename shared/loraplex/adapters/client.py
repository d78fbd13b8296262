"""Clients of the adapter registry.

* ``AdapterStoreClient``: async HTTP client of the adapter routes (``/v1/adapters`` on the
  adapter-store or the gateway) for Python callers: operators' scripts and the tests.  No service
  uses it (the gateway serves the same routes in-process).  Error responses come back as the
  typed exceptions the server raised.
* Workers read weights straight from Redis by adapter id: ``AdapterStore.from_url(url).fetch(
  "owner/name")`` (sha256 verified on every read); ``load_adapter`` adds PEFT validation against
  the base model.  Tenants (and this HTTP client) only use bare names: a name resolves to the
  caller's own adapter, else to the public one (``adapters.keys``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from loraplex.adapters.errors import (
    AdapterExistsError,
    AdapterForbiddenError,
    AdapterPathError,
    AdapterTooLargeError,
    StoreUnavailableError,
)
from loraplex.adapters.info import AdapterInfo
from loraplex.adapters.store import AdapterStore
from loraplex.errors import AdapterError, AdapterNotFoundError, LoraplexError
from loraplex.tenants import AuthenticationError

if TYPE_CHECKING:
    from loraplex.lora.adapter import LoraAdapter
    from loraplex.model.config import ModelConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

_BY_STATUS: dict[int, type[LoraplexError]] = {
    400: AdapterError,
    401: AuthenticationError,
    403: AdapterForbiddenError,
    404: AdapterNotFoundError,
    409: AdapterExistsError,
    413: AdapterTooLargeError,
    503: StoreUnavailableError,
}


class AdapterStoreHTTPError(LoraplexError):
    """An error answer with no more specific type; keeps the status and the OpenAI error body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {body.get('message', body)}")


class AdapterStoreClient:
    """``async with AdapterStoreClient("http://127.0.0.1:8100", api_key=...) as c: ...``"""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AdapterStoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def list(self) -> list[AdapterInfo]:
        body = await self._call("GET", "/v1/adapters")
        return [AdapterInfo.from_json(d) for d in body["data"]]

    async def get(self, name: str) -> AdapterInfo:
        return AdapterInfo.from_json(await self._call("GET", _path(name)))

    async def delete(self, name: str) -> None:
        await self._call("DELETE", _path(name))

    async def upload(
        self,
        name: str,
        config_bytes: bytes,
        weights_bytes: bytes,
        *,
        visibility: str | None = None,
        replace: bool = False,
    ) -> AdapterInfo:
        """Multipart upload of the two PEFT files (both under the form field ``files``)."""
        files = [
            ("files", (CONFIG_FILE, config_bytes, "application/json")),
            ("files", (WEIGHTS_FILE, weights_bytes, "application/octet-stream")),
        ]
        data = {"name": name, "replace": "true" if replace else "false"}
        if visibility is not None:  # unset: private when new, unchanged on replace
            data["visibility"] = visibility
        return AdapterInfo.from_json(
            await self._call("POST", "/v1/adapters", data=data, files=files)
        )

    async def upload_dir(self, name: str, path: str | Path, **kwargs: Any) -> AdapterInfo:
        """Upload a local PEFT directory."""
        root = Path(path)
        cfg, weights = await asyncio.to_thread(
            lambda: ((root / CONFIG_FILE).read_bytes(), (root / WEIGHTS_FILE).read_bytes())
        )
        return await self.upload(name, cfg, weights, **kwargs)

    async def register_path(
        self, name: str, path: str, *, visibility: str | None = None, replace: bool = False
    ) -> AdapterInfo:
        """Register a directory the *server* can read (under its ``--adapters-root``)."""
        body: dict[str, Any] = {"name": name, "path": path, "replace": replace}
        if visibility is not None:
            body["visibility"] = visibility
        return AdapterInfo.from_json(await self._call("POST", "/v1/adapters", json=body))

    async def health(self) -> bool:
        try:
            return (await self._http.get("/ready")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            resp = await self._http.request(method, url, **kwargs)
        except httpx.TransportError as e:
            raise StoreUnavailableError(f"adapter store unreachable: {e}") from e
        if resp.is_success:
            return resp.json()
        try:
            err = resp.json()["error"]
        except (ValueError, KeyError, TypeError):
            err = {"message": resp.text, "type": "error", "param": None, "code": None}
        if resp.status_code == 403 and err.get("code") == "path_not_allowed":
            raise AdapterPathError(err["message"])
        cls = _BY_STATUS.get(resp.status_code)
        if cls is None:
            raise AdapterStoreHTTPError(resp.status_code, err)
        raise cls(err.get("message", resp.text))


async def load_adapter(
    store: AdapterStore, aid: str, model: ModelConfig, max_rank: int
) -> LoraAdapter:
    """Fetch (sha-verified) and validate adapter id ``aid`` for a worker, off the event loop."""
    from loraplex.lora.adapter import parse_adapter

    config_bytes, weights_bytes = await store.fetch_weights(aid)
    name = aid.partition("/")[2]
    adapter = await asyncio.to_thread(
        parse_adapter, name, config_bytes, weights_bytes, model, max_rank
    )
    return dataclasses.replace(adapter, name=aid)


def _path(name: str) -> str:
    return f"/v1/adapters/{quote(name, safe='')}"
