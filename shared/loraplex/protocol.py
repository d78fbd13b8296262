"""Every NATS subject and every message loraplex sends.

Messages are frozen dataclasses with a wire tag; ``loraplex.codec`` packs and checks them, and
its ``encode``, ``decode`` and ``ProtocolError`` are re-exported here, so one import serves.
Domain types (``SamplingParams`` with its ``StructuredOutputsParams``, ``TokenLogprobs``) are
fields of messages as they are: registered below as wire types, with no mirror class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from loraplex.codec import Message as Message
from loraplex.codec import ProtocolError as ProtocolError
from loraplex.codec import decode as decode
from loraplex.codec import encode as encode
from loraplex.codec import wire_type
from loraplex.sampling_params import SamplingParams
from loraplex.structured_outputs import StructuredOutputsParams
from loraplex.token_logprobs import TokenLogprobs

# Domain types that travel inside messages as they are (checked by their own __init__ on decode).
for _domain in (SamplingParams, StructuredOutputsParams, TokenLogprobs):
    wire_type(_domain)


# ---- subjects ------------------------------------------------------------------------------
class Subjects:
    """All subjects in one place.  Per-worker and per-gateway subjects are built by the methods."""

    SUBMIT = "loraplex.sched.submit"  # gateway -> scheduler (request/reply): SubmitRequest -> SubmitReply
    CANCEL = "loraplex.sched.cancel"  # gateway -> scheduler: CancelRequest
    HEARTBEAT = "loraplex.sched.heartbeat"  # workers -> scheduler: WorkerHeartbeat
    USAGE = "loraplex.sched.usage"  # workers -> scheduler: RequestProgress
    ADAPTER_EVENTS = "loraplex.adapters.events"  # adapter-store -> all: AdapterEvent
    STATS = (
        "loraplex.sched.stats"  # scheduler -> gateways (for /ready), every second: SchedulerStats
    )
    # the leading scheduler -> gateways and workers, at takeover and every second: LeaderAnnounce
    LEADER = "loraplex.sched.leader"
    # gateways -> schedulers, every second: GatewayHeartbeat (a gateway that falls silent is
    # gone, with its clients: the requests it owns are cancelled)
    GATEWAYS = "loraplex.sched.gateways"
    # gateway -> gateways (request/reply), while the adapter store is unreachable and the asking
    # gateway never resolved the name: AdapterNameQuery -> AdapterNameAnswer, from a gateway that
    # did (known_adapters.py); the others stay silent
    ADAPTER_NAMES = "loraplex.gateway.adapter_names"

    @staticmethod
    def worker(worker_id: str) -> str:
        """scheduler -> one worker: PrefillAssign, CancelRequest, PrefetchAdapter."""
        return f"loraplex.worker.{worker_id}"

    @staticmethod
    def kv(worker_id: str) -> str:
        """prefill worker -> decode worker: KVBegin (request/reply) and KVChunk messages."""
        return f"loraplex.kv.{worker_id}"

    @staticmethod
    def stream(gateway_id: str) -> str:
        """workers (and the scheduler) -> the gateway that owns a request: TokenDelta,
        RequestError.  A request's last message (its final delta, or its error) is sent as a
        request the gateway answers with ``StreamAck``, and sent again until it is answered."""
        return f"loraplex.stream.{gateway_id}"


# ---- messages ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubmitRequest(Message):
    TAG: ClassVar[str] = "submit"
    request_id: str
    tenant: str
    gateway_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams  # validated again on decode (a bad value is a ProtocolError)
    adapter: str | None = None
    arrival_ts: float = 0.0
    # A gateway sends its unfinished requests again (same id) when a new scheduler leads: the
    # scheduler adopts or re-queues them, never runs one twice.  ``tokens_received``: how many
    # tokens of it the gateway has already streamed; ``received_token_ids``: their ids, when the
    # gateway got every one (None after a lost delta), so that the new leader can migrate the
    # request it adopts at once if its worker dies (its own token log starts at the takeover).
    resubmit: bool = False
    tokens_received: int = 0
    received_token_ids: list[int] | None = None
    # Seconds since the gateway first sent it (on a resubmission): the new leader counts them as
    # queue time, so a failover does not restart the request's --max-queue-wait.
    waited_s: float = 0.0
    # The prompt's prefix keys (``loraplex.prefix_keys``), hashed by the gateway beside its
    # tokenization so that the one scheduler need not; None (or a list of the wrong length):
    # the scheduler computes them itself.
    prefix_keys: list[int] | None = None
    # Which cached prefixes it may reuse (with its adapter's): the gateway sets its tenant, so no
    # tenant can time or count another's cached prompts (``--prefix-cache-scope``), plus the
    # client's own ``cache_salt`` when it sent one.  The prefix keys above are hashed under it.
    cache_salt: str = ""


@dataclass(frozen=True)
class SubmitReply(Message):
    """scheduler -> gateway (reply to SUBMIT): queued, or refused with an HTTP-like status."""

    TAG: ClassVar[str] = "submit_reply"
    request_id: str
    accepted: bool
    code: int = 200  # 429 queue full, 503 no worker can serve
    message: str = ""
    # The accepting leader's lease epoch (0 without replicas): a gateway resubmits a request
    # when it hears a newer leader, not one that accepted it already.
    epoch: int = 0


@dataclass(frozen=True)
class CancelRequest(Message):
    TAG: ClassVar[str] = "cancel"
    request_id: str
    reason: str = "client disconnected"
    # False: the scheduler preempted it and may place it on this worker again (a later attempt),
    # so the worker does not refuse the id from now on as it does a client's cancel.
    remember: bool = True


@dataclass(frozen=True)
class TokenDelta(Message):
    """Newly generated tokens of one request; ``finish_reason`` set on the last delta.

    ``completion_tokens`` counts the completion's tokens up to and including these, so the first
    of ``token_ids`` is token ``completion_tokens - len(token_ids)`` of the completion: a gateway
    drops the ones it already has (a migrated request's worker first replays every token so far).

    ``text`` is the worker's detokenization (stop strings already cut: the only one; the gateway
    shows it as is), starting at character ``text_start`` of the completion's text, so a gateway
    drops the characters it already has the same way.  Text can lag its tokens (an incomplete
    UTF-8 sequence, or a possible start of a stop string, is held back until it resolves).

    Core NATS delivers at most once, so a delta can be lost (a cluster node killed while it
    crossed it): the last delta carries the whole completion's text (``full_text``) and its
    ``completion_tokens`` is the total, from which a gateway repairs what it missed.
    """

    TAG: ClassVar[str] = "delta"
    request_id: str
    token_ids: list[int]
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprobs] | None = None  # one per token id, when asked for
    # Prompt tokens 1.. (the first has none), on the first delta, when asked for.
    prompt_logprobs: list[TokenLogprobs] | None = None
    # Prompt tokens whose K/V the prefill took from its prefix cache (OpenAI's
    # usage.prompt_tokens_details.cached_tokens); on every delta, 0 when none or unknown.
    cached_tokens: int = 0
    text_start: int = 0  # character offset of ``text`` in the completion's text
    full_text: str | None = None  # on the last delta: the completion's whole text


@dataclass(frozen=True)
class RequestError(Message):
    TAG: ClassVar[str] = "error"
    request_id: str
    code: int
    message: str


@dataclass(frozen=True)
class StreamAck(Message):
    """receiver -> sender: a message about ``request_id`` sent as a request arrived (the reply to
    a final ``TokenDelta`` or a ``RequestError`` from a gateway, to a last ``RequestProgress``
    from the leading scheduler, to a ``PrefillAssign`` from its worker: ``loraplex.acked``)."""

    TAG: ClassVar[str] = "stream_ack"
    request_id: str


@dataclass(frozen=True)
class AdapterEvent(Message):
    """Published by the adapter store when an adapter is created, replaced or deleted."""

    TAG: ClassVar[str] = "adapter_event"
    # "created" | "replaced" | "deleted" | "unloaded" (vLLM's unload: not served, weights kept;
    # workers drop it as for "deleted") | "loaded" (served again)
    kind: str
    name: str
    owner: str
    sha256: str = ""
    version: int = 0


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
    # The lease epoch of the scheduler that sent it (fencing token): a worker ignores an
    # assignment from an older epoch than one it has seen (a deposed leader's late message).
    epoch: int = 0
    # A migrated request (its worker died mid-stream): the tokens it already generated, which
    # are prefilled with the prompt and count as its first outputs.
    generated: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class AdapterNameQuery(Message):
    """gateway -> gateways: which adapter ``name`` means for ``tenant`` (Redis unreachable)."""

    TAG: ClassVar[str] = "adapter_name_query"
    tenant: str
    name: str


@dataclass(frozen=True)
class AdapterNameAnswer(Message):
    """A gateway that resolved it recently: the adapter's id (``owner/name``)."""

    TAG: ClassVar[str] = "adapter_name_answer"
    adapter_id: str


@dataclass(frozen=True)
class LeaderAnnounce(Message):
    """the leading scheduler -> gateways, workers and standby schedulers: who leads, with which
    lease epoch.  A gateway that sees a new epoch resubmits its unfinished requests."""

    TAG: ClassVar[str] = "sched_leader"
    scheduler_id: str
    epoch: int


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
    # Slots pinned by running requests: while all are, a request for an adapter in none of them
    # waits on this worker (placement prefers one with a slot to spare).
    adapter_slots_pinned: int = 0
    prefix_cache_hit_tokens: int = 0  # since start: prompt tokens whose K/V were reused
    prefix_cache_query_tokens: int = 0  # since start: prompt tokens admitted
    # Request ids the worker holds (None: not reported).  The scheduler re-dispatches a request
    # its worker stopped listing without finishing it (an assignment lost in a NATS restart).
    active: list[str] | None = None
    # A new value each time the worker process starts ("": not reported).  The same id with
    # another incarnation is a worker that restarted (a supervisor brings it back within a
    # heartbeat timeout): what the old process held is lost, and is recovered at once.
    incarnation: str = ""
    # The worker answers assignments sent as requests (``loraplex.assignments``): the scheduler
    # sends them again until answered.  False (an older worker, a test's stand-in): published.
    acks_assignments: bool = False


@dataclass(frozen=True)
class GatewayHeartbeat(Message):
    """gateway -> schedulers, every second: this gateway (and its clients' connections) lives.
    The scheduler cancels the requests of a gateway it heard and then stopped hearing."""

    TAG: ClassVar[str] = "gateway_heartbeat"
    gateway_id: str
    ts: float = 0.0


@dataclass(frozen=True)
class SchedulerStats(Message):
    """scheduler -> gateways, every second: queues, fairness counters, workers, and the serving
    capacity (``pools``) that a gateway's ``/ready`` reads."""

    TAG: ClassVar[str] = "sched_stats"
    queued: dict[str, int]  # tenant -> requests waiting in the scheduler
    counters: dict[str, float]  # tenant -> fairness counter (weighted service)
    workers: dict[str, dict[str, float]]  # worker id -> kv_used, kv_total, running, slots_used, ...
    # Role ("prefill", "decode", "both") -> live, non-draining workers: the gateways' /ready.
    pools: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestProgress(Message):
    """worker -> scheduler: a request moved on (tokens produced, handed over, finished, failed).

    ``event``: "handoff" (prefill done, KV sent to ``decode_worker``), "tokens" (``new_tokens``
    generated since the last report), "finished", "failed" (retryable), "error" (terminal).
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
    # With "failed": a worker the reporter found unreachable or refusing (its decode peer), which
    # the scheduler then avoids until that worker's next heartbeat.
    suspect: str = ""
    # With "tokens" / "finished": the ids of the ``new_tokens``, which are the completion's tokens
    # ``completion_tokens - len(token_ids)`` ..; the scheduler keeps them to migrate the request
    # if its worker dies (published before the matching TokenDelta, so the scheduler always
    # knows at least what the gateway has).
    token_ids: list[int] = field(default_factory=list)
    # With "tokens", now and then (``Publisher.tokens``): all the completion's token ids so far.
    # Core NATS can lose a report; the gap would stop a migration from resuming, and a snapshot
    # repairs it (``scheduler/migration.py``).
    all_token_ids: list[int] | None = None


# At least this many tokens between a worker's snapshots of a request's token ids.
TOKEN_SNAPSHOT_EVERY = 64


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
    first_logprobs: TokenLogprobs | None = None
    prompt_logprobs: list[TokenLogprobs] | None = None  # prompt tokens 1.., when asked for
    # A migrated request's tokens from before (PrefillAssign.generated): the K/V cover the prompt
    # and them (``num_tokens``), and ``first_token`` follows them.
    generated: list[int] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens the prefill took from its prefix cache (TokenDelta's)


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
