"""The one codec on the wire: msgpack envelopes of typed, versioned messages (never pickle).

A message on the wire is ``{"v": PROTOCOL_VERSION, "t": <type tag>, "d": {field: value}}``.
``decode`` checks the version, the tag and every field's type and raises ``ProtocolError`` on
anything else; subscribers log and drop such messages instead of crashing.  The messages
themselves, and every subject, are in ``loraplex.protocol``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, Union

import msgpack

PROTOCOL_VERSION = 1


class ProtocolError(ValueError):
    """A message could not be decoded (wrong version, unknown type, bad fields)."""


M = TypeVar("M", bound="Message")
_REGISTRY: dict[str, type[Message]] = {}


@dataclass(frozen=True)
class Message:
    TAG: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TAG:
            if cls.TAG in _REGISTRY:
                raise TypeError(f"duplicate message tag {cls.TAG!r}")
            _REGISTRY[cls.TAG] = cls


def _check(value: Any, hint: Any, where: str) -> Any:
    """Validate (and rebuild nested messages of) one decoded value against its type hint."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check(value, option, where)
            except ProtocolError:
                continue
        raise ProtocolError(f"{where}: {value!r} matches none of {hint}")
    if hint is type(None):
        if value is not None:
            raise ProtocolError(f"{where}: expected null")
        return None
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list")
        (item,) = typing.get_args(hint) or (Any,)
        return [_check(v, item, f"{where}[]") for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected a map")
        _, item = typing.get_args(hint) or (Any, Any)
        return {k: _check(v, item, f"{where}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if isinstance(hint, type) and issubclass(hint, Message):
        return _from_fields(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ProtocolError(f"{where}: expected int, got bool")
    if not isinstance(value, hint):
        raise ProtocolError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    return value


@functools.cache
def _hints(cls: type[Message]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_fields(cls: type[M], data: Any, where: str) -> M:
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: expected a map of fields")
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _check(data[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{where}: missing field {f.name!r}")
    return cls(**kwargs)


def _to_fields(msg: Message) -> dict[str, Any]:
    return {f.name: _to_wire(getattr(msg, f.name)) for f in dataclasses.fields(msg)}


def _to_wire(v: Any) -> Any:
    """Nested messages (also inside lists and maps) become maps of their fields."""
    if isinstance(v, Message):
        return _to_fields(v)
    if isinstance(v, list):
        return [_to_wire(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_wire(x) for k, x in v.items()}
    return v


def encode(msg: Message) -> bytes:
    if not msg.TAG:
        raise TypeError(f"{type(msg).__name__} has no wire tag")
    return msgpack.packb(
        {"v": PROTOCOL_VERSION, "t": msg.TAG, "d": _to_fields(msg)}, use_bin_type=True
    )


def decode(data: bytes, expect: type[M] | tuple[type[Message], ...] | None = None) -> M:
    """Decode and validate; ``expect`` restricts which message types this subject accepts."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:
        raise ProtocolError(f"not msgpack: {e}") from e
    if not isinstance(raw, dict) or "t" not in raw or "d" not in raw:
        raise ProtocolError("not a loraplex message envelope")
    if raw.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {raw.get('v')!r}, this build speaks {PROTOCOL_VERSION}"
        )
    cls = _REGISTRY.get(raw["t"]) if isinstance(raw["t"], str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {raw['t']!r}")
    if expect is not None and not issubclass(cls, expect):
        raise ProtocolError(f"unexpected message type {raw['t']!r} on this subject")
    return _from_fields(cls, raw["d"], cls.__name__)  # type: ignore[return-value]
