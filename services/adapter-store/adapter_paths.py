"""Registration from a directory the server can read: ``{"name", "path", "visibility", "replace"}``.

Only directories below ``--adapters-root`` are accepted.  Paths are resolved with every symlink
followed (``realpath``) before the containment check, for the directory and for each file, so
``..`` segments, absolute paths elsewhere and symlinks pointing out of the root are all refused,
and refused the same way whether or not the target exists (no probing of the filesystem).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from starlette.requests import Request

from loraplex.adapter_store.uploads import (
    AdapterUpload,
    check_name,
    check_visibility,
    invalid,
    parse_bool,
    too_large,
)
from loraplex.adapters.errors import AdapterPathError
from loraplex.errors import AdapterError
from loraplex.lora.adapter import CONFIG_FILE, WEIGHTS_FILE

_MAX_JSON_BYTES = 64 * 1024
_JSON_FIELDS = ("name", "path", "visibility", "replace")


async def read_json_body(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_JSON_BYTES:
            raise invalid("JSON body too large: send name, path, visibility, replace")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise invalid(f"body is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise invalid("JSON body must be an object with name and path")
    unknown = sorted(set(data) - set(_JSON_FIELDS))
    if unknown:
        raise invalid(
            f"unknown field(s) {', '.join(unknown)}; expected {', '.join(_JSON_FIELDS)}", unknown[0]
        )
    return data


def resolve_under_root(root: Path | None, given: object) -> Path:
    """The real directory for ``given`` (relative to the root, or absolute), or raise."""
    if root is None:
        raise AdapterPathError(
            "path registration is disabled: the server runs without --adapters-root; "
            "upload the files as multipart/form-data instead"
        )
    if not isinstance(given, str) or not given.strip():
        raise invalid("missing 'path': a directory under the server's adapters root", "path")
    real = Path(os.path.realpath(root / given))  # an absolute ``given`` replaces the root
    if not _inside(real, root):
        raise AdapterPathError(f"path {given!r} is outside the server's adapters root")
    if not real.is_dir():
        raise AdapterError(f"path {given!r} is not a directory under the adapters root")
    return real


def read_adapter_dir(root: Path, directory: Path, given: str, limit: int) -> tuple[bytes, bytes]:
    """(config, weights) of a resolved directory; each file re-checked against the root."""
    out: list[bytes] = []
    total = 0
    for fname in (CONFIG_FILE, WEIGHTS_FILE):
        real = Path(os.path.realpath(directory / fname))
        if not _inside(real, root):
            raise AdapterPathError(f"{given}/{fname} links outside the server's adapters root")
        if not real.is_file():
            raise AdapterError(f"adapter directory {given!r} has no {fname}")
        if total + real.stat().st_size > limit:
            raise too_large(limit)
        with open(real, "rb") as f:
            data = f.read(limit - total + 1)  # bounded even if the file grows meanwhile
        total += len(data)
        if total > limit:
            raise too_large(limit)
        out.append(data)
    return out[0], out[1]


async def read_path_registration(request: Request, root: Path | None, limit: int) -> AdapterUpload:
    data = await read_json_body(request)
    name = check_name(data.get("name"))
    visibility = check_visibility(data.get("visibility"))
    replace = parse_bool(data.get("replace", False), "replace")
    return await upload_from_dir(root, name, data.get("path"), limit, visibility, replace)


async def upload_from_dir(
    root: Path | None,
    name: str,
    given: object,
    limit: int,
    visibility: str | None = None,
    replace: bool = False,
) -> AdapterUpload:
    """The upload of adapter ``name`` from directory ``given`` under ``root`` (read in a thread);
    ``name`` must already be checked (``check_name``)."""
    directory = resolve_under_root(root, given)
    config, weights = await asyncio.to_thread(read_adapter_dir, root, directory, given, limit)  # type: ignore[arg-type]
    return AdapterUpload(name, config, weights, visibility, replace)


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)
