"""Adapters registered when the stack starts: vLLM's ``--lora-modules``.

``vllm serve BASE --lora-modules sql=/adapters/sql`` serves the adapter ``sql`` from the first
request on; ``loraplex up --lora-modules sql=/adapters/sql`` does the same.  Each module is
``name=path`` or vLLM's JSON form ``{"name": ..., "path": ..., "base_model_name": ...}``.  The
adapter is read, validated and stored exactly as a path registration is (``Registrar``: the
same checks against the base model, rank limit and weight bound), as a public adapter of the
operator's tenant, replacing an earlier version of that name.  A module that fails stops the
start-up with a message that names it.
"""

from __future__ import annotations

import json
import os
from argparse import ArgumentTypeError
from dataclasses import dataclass
from pathlib import Path

from loraplex.adapters.registration.adapter_paths import upload_from_dir
from loraplex.adapters.registration.events import EventPublisher
from loraplex.adapters.registration.registrar import Registrar
from loraplex.adapters.registration.uploads import check_name
from loraplex.adapters.store import AdapterStore
from loraplex.errors import AdapterError, LoraplexError
from loraplex.model.config import ModelConfig
from loraplex.tenants import Tenant


@dataclass(frozen=True)
class LoraModule:
    name: str
    path: str  # as given


def parse_lora_module(text: str) -> LoraModule:
    """``name=path`` or ``{"name": ..., "path": ...}`` (an argparse ``type``: its
    ArgumentTypeError, a ValueError, says what is wrong)."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ArgumentTypeError(f"{text!r} is not valid JSON: {e}") from e
        name, path = data.get("name"), data.get("path")
        if not isinstance(name, str) or not isinstance(path, str):
            raise ArgumentTypeError(f'{text!r}: the JSON form needs "name" and "path" strings')
    else:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    try:
        check_name(name)
    except LoraplexError as e:
        raise ArgumentTypeError(f"{text!r}: {e}") from e
    return LoraModule(name, path)


class PreloadError(LoraplexError):
    """A ``--lora-modules`` adapter could not be registered (the message names it)."""


async def register_lora_modules(
    redis_url: str,
    model_dir: str,
    modules: list[LoraModule],
    owner: str,
    *,
    max_rank: int,
    max_bytes: int,
    redis_prefix: str = "loraplex",
) -> list[str]:
    """Register every module (before the workers start: no events are needed); returns the
    names.  PreloadError names the first module that failed and why."""
    if len({m.name for m in modules}) != len(modules):
        raise PreloadError("--lora-modules names an adapter twice")
    store = AdapterStore.from_url(redis_url, prefix=redis_prefix, max_bytes=max_bytes)
    registrar = Registrar(store, ModelConfig.from_dir(model_dir), max_rank, EventPublisher(""))
    try:
        for m in modules:
            folder = os.path.realpath(m.path)
            try:
                upload = await upload_from_dir(
                    Path(folder).parent, m.name, folder, max_bytes, "public", replace=True
                )
                await registrar.register(Tenant(owner, ""), upload, counted=False)
            except (AdapterError, LoraplexError, OSError) as e:
                raise PreloadError(f"--lora-modules {m.name}={m.path}: {e}") from e
    finally:
        await store.close()
    return [m.name for m in modules]
