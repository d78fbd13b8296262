"""Adapter naming and file-name rules (no torch: the gateway and the store import this)."""

from __future__ import annotations

import re

from loraplex.errors import AdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise AdapterError(
            f"invalid adapter name {name!r}: use 1-64 characters [A-Za-z0-9._-], starting alphanumeric"
        )
    return name
