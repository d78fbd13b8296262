"""Registration from a directory the server can read: ``{"name", "path", "visibility", "replace"}``.

Only directories below ``--adapters-root`` are accepted, and their files are judged as a
multipart upload's are (``adapter_files``).  Paths are resolved with every symlink
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

from loraplex.adapters.errors import AdapterPathError, AdapterTooLargeError
from loraplex.adapters.registration.adapter_files import classify
from loraplex.adapters.registration.spool import Spool
from loraplex.adapters.registration.uploads import (
    MAX_CONFIG_BYTES,
    AdapterUpload,
    check_name,
    check_text,
    check_visibility,
    invalid,
    parse_bool,
    too_large,
)
from loraplex.errors import AdapterError
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE

_MAX_JSON_BYTES = 64 * 1024
_JSON_FIELDS = ("name", "path", "visibility", "replace")
_MAX_PATH_CHARS = 4096
_MAX_DIR_ENTRIES = 256


async def read_json_body(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_JSON_BYTES:
            raise invalid("JSON body too large: send name, path, visibility, replace")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, too deep, a 5,000-digit int
        raise invalid(f"body is not valid JSON ({str(e)[:200]})") from e
    if not isinstance(data, dict):
        raise invalid("JSON body must be an object with name and path")
    for key in data:
        check_text(key, "field names")
    unknown = sorted(set(data) - set(_JSON_FIELDS))
    if unknown:
        raise invalid(
            f"unknown field(s) {', '.join(unknown)}; expected {', '.join(_JSON_FIELDS)}", unknown[0]
        )
    for key in _JSON_FIELDS:
        check_text(data.get(key), key)
    return data


def resolve_under_root(root: Path | None, given: object) -> Path:
    """The real directory for ``given`` (relative to the root, or absolute), or raise."""
    if root is None:
        raise AdapterPathError(
            "path registration is disabled: the server runs without --adapters-root; "
            "upload the files as multipart/form-data instead"
        )
    if given is not None and not isinstance(given, str):
        raise invalid(f"'path' must be a string, not {type(given).__name__}", "path")
    if not isinstance(given, str) or not given.strip():
        raise invalid("missing 'path': a directory under the server's adapters root", "path")
    check_text(given, "path")
    if len(given) > _MAX_PATH_CHARS:
        raise invalid(f"path is longer than {_MAX_PATH_CHARS} characters", "path")
    real = Path(os.path.realpath(root / given))  # an absolute ``given`` replaces the root
    if not _inside(real, root):
        raise AdapterPathError(f"path {given!r} is outside the server's adapters root")
    if not _is_dir(real):
        raise AdapterError(f"path {given!r} is not a directory under the adapters root")
    return real


def read_adapter_dir(
    root: Path, directory: Path, given: str, limit: int, spool_dir: str | None
) -> tuple[bytes, Spool]:
    """(config, spooled weights) of a resolved directory, its files classified as a multipart
    upload's are, the two read re-checked against the root (blocking: call in a thread)."""
    _check_files(directory, given)
    real: dict[str, Path] = {}
    for fname in (CONFIG_FILE, WEIGHTS_FILE):
        real[fname] = Path(os.path.realpath(directory / fname))
        if not _inside(real[fname], root):
            raise AdapterPathError(f"{given}/{fname} links outside the server's adapters root")
        if not real[fname].is_file():
            raise AdapterError(f"adapter directory {given!r} has no {fname}")
    with open(real[CONFIG_FILE], "rb") as f:
        config = f.read(MAX_CONFIG_BYTES + 1)  # bounded even if the file grows meanwhile
    if len(config) > MAX_CONFIG_BYTES:
        raise AdapterTooLargeError(f"{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes")
    if len(config) + real[WEIGHTS_FILE].stat().st_size > limit:
        raise too_large(limit)  # the copy below checks again, in case the file grows
    weights = Spool.copy_of(real[WEIGHTS_FILE], limit - len(config), too_large(limit), spool_dir)
    return config, weights


def _check_files(directory: Path, given: str) -> None:
    """Every file of the folder has a role (``adapter_files.classify``); subfolders are skipped."""
    try:
        with os.scandir(directory) as entries:
            for i, entry in enumerate(entries):
                if i >= _MAX_DIR_ENTRIES:
                    raise AdapterError(f"adapter directory {given!r} holds more than {_MAX_DIR_ENTRIES} entries")  # fmt: skip
                if not entry.is_dir():
                    classify(entry.name)
    except OSError as e:
        raise AdapterError(f"adapter directory {given!r} cannot be listed ({e.strerror})") from e


async def read_path_registration(
    request: Request, root: Path | None, limit: int, spool_dir: str | None = None
) -> AdapterUpload:
    data = await read_json_body(request)
    name = check_name(data.get("name"))
    visibility = check_visibility(data.get("visibility"))
    replace = parse_bool(data.get("replace", False), "replace")
    return await upload_from_dir(
        root, name, data.get("path"), limit, visibility, replace, spool_dir
    )


async def upload_from_dir(
    root: Path | None,
    name: str,
    given: object,
    limit: int,
    visibility: str | None = None,
    replace: bool = False,
    spool_dir: str | None = None,
) -> AdapterUpload:
    """The upload of adapter ``name`` from directory ``given`` under ``root`` (read in a thread,
    the weights copied to a spool under ``spool_dir``); ``name`` must already be checked."""
    directory = resolve_under_root(root, given)
    config, weights = await asyncio.to_thread(
        read_adapter_dir,
        root,  # type: ignore[arg-type]  # not None: resolve_under_root checked
        directory,
        given,  # type: ignore[arg-type]
        limit,
        spool_dir,
    )
    return AdapterUpload(name, config, weights, visibility, replace, source=given)  # type: ignore[arg-type]


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # too long, unencodable
        return False


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)
