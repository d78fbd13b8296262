"""The requests a worker serves: ``Active`` (one request) and ``ActiveTable`` (all of them, the
ids recently cancelled, and whether the worker still takes new work)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from loraplex.protocol import TOKEN_SNAPSHOT_EVERY, SubmitRequest
from loraplex.worker.adapter_pager import AdapterPager

MAX_REMEMBERED_CANCELS = 4096
MAX_REMEMBERED_ASSIGNMENTS = 16384  # minutes of assignments at a busy worker's rate


@dataclass
class Active:
    """A request this worker is serving."""

    submit: SubmitRequest
    adapter_key: str | None
    decode_worker: str = ""
    generated: int = 0
    # A migrated request: the tokens it generated on a worker that died.  They are replayed to
    # the gateway before this worker's first token (it drops what it already has), so a token
    # the dead worker reported to the scheduler but never delivered is not lost.
    resumed: list[int] = field(default_factory=list)
    replayed: bool = False
    # Every completion token so far (``resumed`` first), for the scheduler's snapshots, and the
    # count at which the next one goes (``Publisher.tokens``).
    token_ids: list[int] = field(default_factory=list)
    next_snapshot: int = TOKEN_SNAPSHOT_EVERY
    # prompt tokens its prefill took from a prefix cache (this engine's, or KVBegin's)
    cached_tokens: int = 0
    # (scheduler epoch, attempt) of the assignment it runs for, and whether its K/V hand-over to
    # ``decode_worker`` began: until then a newer assignment may send it elsewhere.
    assignment: tuple[int, int] = (0, 0)
    shipping: bool = False

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.resumed)


class ActiveTable:
    """Owns the worker's table of requests in service (``active``), the recently cancelled ids
    (``cancelled``) and the ``draining`` flag; releasing a request unpins its adapter in the pager.

    An assignment or K/V hand-over that arrives after its cancel (they cross on different
    subjects) finds its id in ``cancelled`` and is refused instead of generating for nobody.
    An assignment that arrives again (the scheduler resends one whose answer was lost,
    ``loraplex.assignments``) finds its ``(request id, epoch, attempt)`` in ``assigned`` and is
    not run twice, even after the request finished or moved to its decode worker.
    """

    def __init__(self, pager: AdapterPager) -> None:
        self._pager = pager
        self.active: dict[str, Active] = {}
        self.cancelled: OrderedDict[str, None] = OrderedDict()
        self.assigned: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self.draining = False

    def first_assignment(self, request_id: str, epoch: int, attempt: int) -> bool:
        """Remember this assignment; False if it was seen before (a resent copy)."""
        key = (request_id, epoch, attempt)
        if key in self.assigned:
            return False
        self.assigned[key] = None
        while len(self.assigned) > MAX_REMEMBERED_ASSIGNMENTS:
            self.assigned.popitem(last=False)
        return True

    def remember_cancel(self, request_id: str) -> None:
        self.cancelled[request_id] = None
        while len(self.cancelled) > MAX_REMEMBERED_CANCELS:
            self.cancelled.popitem(last=False)

    def release(self, request_id: str) -> None:
        """Forget a request (engine loop only): unpin its adapter."""
        req = self.active.pop(request_id, None)
        if req is not None and req.adapter_key is not None:
            self._pager.unpin(req.adapter_key)
