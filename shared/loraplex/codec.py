"""The one codec on the wire: msgpack envelopes of typed, versioned messages (never pickle).

A message on the wire is ``{"v": PROTOCOL_VERSION, "t": <type tag>, "d": {field: value}}``.
``decode`` checks the version, the tag and every field's type and raises ``ProtocolError`` on
anything else; subscribers log and drop such messages instead of crashing.  The messages
themselves, and every subject, are in ``loraplex.protocol``.

Domain types travel inside messages as they are, with no mirror class: ``wire_type`` registers a
frozen dataclass (``SamplingParams``, ``TokenLogprobs``, ...), which then packs as a map of its
fields and is rebuilt, through its own ``__init__`` checks, on decode.  Tuples travel as lists, and
maps with non-string keys (``logit_bias``: token id -> bias) as lists of ``[key, value]`` pairs,
since msgpack map keys must be strings here.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, Union

import msgpack

PROTOCOL_VERSION = 2  # 2: domain types on the wire (SamplingParams, TokenLogprobs)


class ProtocolError(ValueError):
    """A message could not be decoded (wrong version, unknown type, bad fields)."""


M = TypeVar("M", bound="Message")
_REGISTRY: dict[str, type[Message]] = {}
_WIRE_TYPES: set[type] = set()  # plain frozen dataclasses that may nest in messages

T = TypeVar("T")
# Item types a list may be checked by exact type alone (bool is not an int here; an int in a
# list of floats takes the slow path, which converts it).
_SCALARS = frozenset({int, float, str})
_PLAIN = frozenset({int, float, str, bool, bytes, type(None)})


def wire_type(cls: type[T]) -> type[T]:
    """Let a frozen dataclass (a domain type, not a message) nest in messages by its fields."""
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} is not a frozen dataclass")
    _WIRE_TYPES.add(cls)
    return cls


@dataclass(frozen=True)
class Message:
    TAG: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TAG:
            if cls.TAG in _REGISTRY:
                raise TypeError(f"duplicate message tag {cls.TAG!r}")
            _REGISTRY[cls.TAG] = cls


@functools.cache
def _shape(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """``typing.get_origin`` and ``get_args`` of a field's hint, once per hint: they cost a
    microsecond or so a call, and a SUBMIT has dozens of fields."""
    return typing.get_origin(hint), typing.get_args(hint)


def _check(value: Any, hint: Any, where: str) -> Any:
    """Validate (and rebuild nested messages of) one decoded value against its type hint."""
    kind = type(value)
    if kind is hint and kind in _PLAIN:  # most fields: a scalar of exactly its type
        return value
    origin, hint_args = _shape(hint)
    if origin in (Union, types.UnionType):
        options = hint_args
        if kind in _PLAIN and kind in options:  # ``str | None`` and the like, without a try
            return value
        for option in options:
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
        (item,) = hint_args or (Any,)
        if item in _SCALARS and (not value or set(map(type, value)) == {item}):
            return value  # token ids, block keys: checked in C, not one call per item
        return [_check(v, item, f"{where}[]") for v in value]
    if origin is tuple:
        return _check_tuple(value, hint_args, where)
    if origin is dict:
        key, item = hint_args or (Any, Any)
        if isinstance(value, list) and key is not str:  # non-string keys travel as pairs
            pairs = [_check_tuple(kv, (key, item), f"{where}[]") for kv in value]
            return dict(pairs)
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected a map")
        return {
            _check(k, key, f"{where} key"): _check(v, item, f"{where}.{k}")
            for k, v in value.items()
        }
    if hint is Any:
        return value
    if isinstance(hint, type) and (issubclass(hint, Message) or hint in _WIRE_TYPES):
        return _from_fields(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ProtocolError(f"{where}: expected int, got bool")
    if not isinstance(value, hint):
        raise ProtocolError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    return value


def _check_tuple(value: Any, args: tuple[Any, ...], where: str) -> tuple[Any, ...]:
    """``tuple[X, ...]`` or ``tuple[X, Y]`` from a list."""
    if not isinstance(value, list):
        raise ProtocolError(f"{where}: expected a list")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_check(v, args[0], f"{where}[]") for v in value)
    if len(value) != len(args):
        raise ProtocolError(f"{where}: expected {len(args)} items, got {len(value)}")
    return tuple(
        _check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
    )


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    """``(name, type hint, required)`` of each ``__init__`` field, resolved once per class."""
    hints = typing.get_type_hints(cls)
    return tuple(
        (
            f.name,
            hints[f.name],
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
        if f.init
    )


def _from_fields(cls: type[M], data: Any, where: str) -> M:
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: expected a map of fields")
    kwargs = {}
    for name, hint, required in _fields(cls):
        if name in data:
            value = data[name]
            if type(value) is hint and hint in _PLAIN:  # most fields: no call, no path string
                kwargs[name] = value
            else:
                kwargs[name] = _check(value, hint, f"{where}.{name}")
        elif required:
            raise ProtocolError(f"{where}: missing field {name!r}")
    try:
        return cls(**kwargs)
    except Exception as e:  # a domain type's own checks (InvalidRequestError, overflow, ...)
        raise ProtocolError(f"{where}: {e}") from e


def _to_fields(msg: Any) -> dict[str, Any]:
    return {name: _to_wire(getattr(msg, name)) for name, _, _ in _fields(type(msg))}


def _to_wire(v: Any) -> Any:
    """Nested messages and wire types (also inside lists and maps) become maps of their fields;
    tuples become lists, and maps with non-string keys lists of ``[key, value]`` pairs."""
    kind = type(v)
    if kind in _PLAIN:  # most fields: as they are
        return v
    if isinstance(v, Message) or kind in _WIRE_TYPES:
        return _to_fields(v)
    if isinstance(v, (list, tuple)):
        if set(map(type, v)) <= _PLAIN:  # token ids and the like: nothing to convert
            return v if type(v) is list else list(v)
        return [_to_wire(x) for x in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: _to_wire(x) for k, x in v.items()}
        return [[k, _to_wire(x)] for k, x in v.items()]
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
