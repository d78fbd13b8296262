"""Every NATS subject and every message loraplex sends, with the one codec (msgpack, versioned).

A message on the wire is ``{"v": PROTOCOL_VERSION, "t": <type tag>, "d": {field: value}}``.
``decode`` checks the version, the tag and every field's type and raises ``ProtocolError`` on
anything else; subscribers log and drop such messages instead of crashing.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

import msgpack

from loraplex.sampling_params import SamplingParams
from loraplex.structured_outputs import StructuredOutputsParams

PROTOCOL_VERSION = 1


class ProtocolError(ValueError):
    """A message could not be decoded (wrong version, unknown type, bad fields)."""


# ---- subjects ------------------------------------------------------------------------------
class Subjects:
    """All subjects in one place.  Per-worker and per-gateway subjects are built by the methods."""

    SUBMIT = "loraplex.sched.submit"  # gateway -> scheduler (request/reply): SubmitRequest -> SubmitReply
    CANCEL = "loraplex.sched.cancel"  # gateway -> scheduler: CancelRequest
    HEARTBEAT = "loraplex.sched.heartbeat"  # workers -> scheduler: WorkerHeartbeat
    USAGE = "loraplex.sched.usage"  # workers -> scheduler: UsageReport, RequestDone
    ADAPTER_EVENTS = "loraplex.adapters.events"  # adapter-store -> all: AdapterEvent
    STATS = (
        "loraplex.sched.stats"  # scheduler -> gateways (for /metrics), every second: SchedulerStats
    )

    @staticmethod
    def worker(worker_id: str) -> str:
        """scheduler -> one worker: PrefillAssign, DecodeAssign, CancelRequest, PrefetchAdapter."""
        return f"loraplex.worker.{worker_id}"

    @staticmethod
    def kv(worker_id: str) -> str:
        """prefill worker -> decode worker: KVChunk messages for requests assigned to it."""
        return f"loraplex.kv.{worker_id}"

    @staticmethod
    def stream(gateway_id: str) -> str:
        """workers -> the gateway that owns a request: TokenDelta, RequestError."""
        return f"loraplex.stream.{gateway_id}"


# ---- messages ------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class StructuredSpec(Message):
    """StructuredOutputsParams on the wire: its kind and its constraint as text."""

    TAG: ClassVar[str] = ""  # only inside SamplingSpec
    kind: str
    spec: str = ""


@dataclass(frozen=True)
class SamplingSpec(Message):
    """SamplingParams on the wire (see loraplex.sampling_params)."""

    TAG: ClassVar[str] = "sampling"
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    structured_outputs: StructuredSpec | None = None

    # Every field mirrors the SamplingParams field of the same name (tuples travel as lists).
    @classmethod
    def from_params(cls, p: SamplingParams) -> SamplingSpec:
        values = {f.name: getattr(p, f.name) for f in dataclasses.fields(cls)}
        so = p.structured_outputs
        values["structured_outputs"] = None if so is None else StructuredSpec(so.kind, so.spec)
        return cls(**{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})

    def to_params(self) -> SamplingParams:
        """Validated SamplingParams (raises InvalidRequestError on bad values)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        so = self.structured_outputs
        values["structured_outputs"] = (
            None if so is None else StructuredOutputsParams.from_spec(so.kind, so.spec)
        )
        return SamplingParams(**values)


@dataclass(frozen=True)
class SubmitRequest(Message):
    TAG: ClassVar[str] = "submit"
    request_id: str
    tenant: str
    gateway_id: str
    prompt_token_ids: list[int]
    sampling: SamplingSpec
    adapter: str | None = None
    arrival_ts: float = 0.0


@dataclass(frozen=True)
class SubmitReply(Message):
    """scheduler -> gateway (reply to SUBMIT): queued, or refused with an HTTP-like status."""

    TAG: ClassVar[str] = "submit_reply"
    request_id: str
    accepted: bool
    code: int = 200  # 429 queue full, 503 no worker can serve
    message: str = ""


@dataclass(frozen=True)
class CancelRequest(Message):
    TAG: ClassVar[str] = "cancel"
    request_id: str
    reason: str = "client disconnected"


@dataclass(frozen=True)
class TokenLogprob(Message):
    """A generated token's logprob and the most likely alternatives (OpenAI ``logprobs``)."""

    TAG: ClassVar[str] = ""  # only inside TokenDelta / KVBegin
    token_id: int
    logprob: float
    top_ids: list[int] = field(default_factory=list)
    top_logprobs: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TokenDelta(Message):
    """Newly generated tokens of one request; ``finish_reason`` set on the last delta."""

    TAG: ClassVar[str] = "delta"
    request_id: str
    token_ids: list[int]
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None  # one per token id, when asked for
    # Prompt tokens 1.. (the first has none), on the first delta, when asked for.
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class RequestError(Message):
    TAG: ClassVar[str] = "error"
    request_id: str
    code: int
    message: str


@dataclass(frozen=True)
class AdapterEvent(Message):
    """Published by the adapter store when an adapter is created, replaced or deleted."""

    TAG: ClassVar[str] = "adapter_event"
    kind: str  # "created" | "replaced" | "deleted"
    name: str
    owner: str
    sha256: str = ""
    version: int = 0


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


# ---- scheduler <-> workers -----------------------------------------------------------------
@dataclass(frozen=True)
class PrefillAssign(Message):
    """scheduler -> prefill (or colocated) worker: run this request.

    ``decode_worker`` is where the KV cache goes; empty for a colocated worker, which decodes itself.
    """

    TAG: ClassVar[str] = "prefill_assign"
    request: SubmitRequest
    decode_worker: str = ""
    attempt: int = 0


@dataclass(frozen=True)
class PrefetchAdapter(Message):
    """scheduler -> worker: start paging this adapter in; a request for it is on its way."""

    TAG: ClassVar[str] = "prefetch"
    adapter: str


@dataclass(frozen=True)
class WorkerHeartbeat(Message):
    """worker -> scheduler, every heartbeat interval: liveness, capacity and adapter residency."""

    TAG: ClassVar[str] = "heartbeat"
    worker_id: str
    role: str  # "prefill" | "decode" | "both"
    free_blocks: int
    total_blocks: int
    block_size: int
    running: int
    waiting: int
    max_num_seqs: int
    adapters: list[str] = field(default_factory=list)  # resident on device or host
    draining: bool = False
    ts: float = 0.0
    adapter_slots_used: int = 0
    adapter_slots_total: int = 0
    prefix_cache_hit_tokens: int = 0  # since start: prompt tokens whose K/V were reused
    prefix_cache_query_tokens: int = 0  # since start: prompt tokens admitted
    # Request ids the worker holds (None: not reported).  The scheduler re-dispatches a request
    # its worker stopped listing without finishing it (an assignment lost in a NATS restart).
    active: list[str] | None = None


@dataclass(frozen=True)
class SchedulerStats(Message):
    """scheduler -> gateways: what /metrics shows about queues, fairness counters and workers."""

    TAG: ClassVar[str] = "sched_stats"
    queued: dict[str, int]  # tenant -> requests waiting in the scheduler
    counters: dict[str, float]  # tenant -> fairness counter (weighted service)
    workers: dict[str, dict[str, float]]  # worker id -> kv_used, kv_total, running, slots_used, ...


@dataclass(frozen=True)
class RequestProgress(Message):
    """worker -> scheduler: a request moved on (tokens produced, handed over, finished, failed).

    ``event``: "handoff" (prefill done, KV sent to ``decode_worker``), "tokens" (``new_tokens``
    generated since the last report), "finished", "failed".
    """

    TAG: ClassVar[str] = "progress"
    request_id: str
    tenant: str
    worker_id: str
    event: str
    new_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    decode_worker: str = ""
    message: str = ""


# ---- prefill -> decode: KV hand-over ---------------------------------------------------------
@dataclass(frozen=True)
class KVBegin(Message):
    """prefill -> decode (NATS request/reply): reserve blocks for a request about to be sent."""

    TAG: ClassVar[str] = "kv_begin"
    request: SubmitRequest
    first_token: int
    num_tokens: int  # tokens whose K/V follow (the prompt)
    num_chunks: int
    dtype: str
    shape: list[int]  # of the exported payload [layers, 2, blocks, block_size, kv_heads, head_dim]
    prefill_worker: str = ""
    chunk_size: int = 0  # bytes of every chunk but the last
    # The sender can skip leading blocks the decode worker already caches (KVReply.cached_blocks);
    # num_chunks then counts the chunks of the full payload, and the receiver recounts.
    accepts_prefix: bool = False
    first_logprobs: TokenLogprob | None = None
    prompt_logprobs: list[TokenLogprob] | None = None  # prompt tokens 1.., when asked for


@dataclass(frozen=True)
class KVReply(Message):
    TAG: ClassVar[str] = "kv_reply"
    request_id: str
    accepted: bool
    reason: str = ""
    cached_blocks: int = 0  # leading payload blocks the decode worker already has: not sent


@dataclass(frozen=True)
class KVChunk(Message):
    """One slice of the exported KV payload (raw bytes), sized below the server's max_payload."""

    TAG: ClassVar[str] = "kv_chunk"
    request_id: str
    index: int
    data: bytes  # senders may pass a memoryview slice of the payload: packed without a copy
