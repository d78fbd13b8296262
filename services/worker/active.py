"""The requests a worker serves: ``Active`` (one request) and ``ActiveTable`` (all of them, the
ids recently cancelled, and whether the worker still takes new work)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from loraplex.protocol import SubmitRequest
from loraplex.worker.adapter_pager import AdapterPager

MAX_REMEMBERED_CANCELS = 4096


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
    # prompt tokens its prefill took from a prefix cache (this engine's, or KVBegin's)
    cached_tokens: int = 0


class ActiveTable:
    """Owns the worker's table of requests in service (``active``), the recently cancelled ids
    (``cancelled``) and the ``draining`` flag; releasing a request unpins its adapter in the pager.

    An assignment or K/V hand-over that arrives after its cancel (they cross on different
    subjects) finds its id in ``cancelled`` and is refused instead of generating for nobody.
    """

    def __init__(self, pager: AdapterPager) -> None:
        self._pager = pager
        self.active: dict[str, Active] = {}
        self.cancelled: OrderedDict[str, None] = OrderedDict()
        self.draining = False

    def remember_cancel(self, request_id: str) -> None:
        self.cancelled[request_id] = None
        while len(self.cancelled) > MAX_REMEMBERED_CANCELS:
            self.cancelled.popitem(last=False)

    def release(self, request_id: str) -> None:
        """Forget a request (engine loop only): unpin its adapter."""
        req = self.active.pop(request_id, None)
        if req is not None and req.adapter_key is not None:
            self._pager.unpin(req.adapter_key)
