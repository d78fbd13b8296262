"""One worker as the scheduler sees it: its latest heartbeat and the capacity committed to it.

Pure Python bookkeeping, kept by ``WorkerRegistry`` (``workers.py``) and read by placement
(``placement.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loraplex.protocol import WorkerHeartbeat


@dataclass(slots=True)  # read for every candidate of every decision: no __dict__
class WorkerState:
    hb: WorkerHeartbeat
    last_seen: float
    requests: dict[str, int] = field(default_factory=dict)  # request_id -> committed KV blocks
    # A peer reported it unreachable (no responders, K/V refused): nothing is placed on it until
    # its next heartbeat, so a retry cannot go straight back to a worker that just died.
    suspect: bool = False
    committed: int = 0  # sum(requests.values()), kept by the registry's commit/release
    # share of its batch slots in use: len(requests) / max_num_seqs, kept by the registry (read
    # several times per decision, so stored rather than computed)
    load: float = 0.0
    # Copies of what placement reads of ``hb`` for every candidate, and of the room left (kept by
    # ``observe`` and ``update_load``): a heartbeat's fields sit behind its ``__dict__``, one more
    # cache miss per candidate when a decision touches a dozen workers out of a thousand.
    role: str = field(init=False)
    draining: bool = field(init=False)
    block_size: int = field(init=False)
    total_blocks: int = field(init=False)
    max_num_seqs: int = field(init=False)
    free_blocks: int = field(init=False)  # total_blocks - committed
    has_slot: bool = field(init=False)  # len(requests) < max_num_seqs
    # Adapters of the requests committed here (adapter -> how many): each pins a slot while it
    # runs, so placement counts them from the moment it places them, not from the worker's next
    # heartbeat (several requests for new adapters placed within one heartbeat interval would
    # otherwise all see the same free slot).
    adapter_runs: dict[str, int] = field(default_factory=dict)
    request_adapters: dict[str, str] = field(default_factory=dict)  # request_id -> its adapter
    # Every adapter slot pinned (at its last heartbeat, or by what was placed since): an adapter
    # it does not hold would wait.
    slots_full: bool = field(init=False)

    def __post_init__(self) -> None:
        self.observe(self.hb, self.last_seen)

    def observe(self, hb: WorkerHeartbeat, now: float) -> None:
        """Take ``hb`` as the worker's latest heartbeat."""
        self.hb, self.last_seen = hb, now
        self.role, self.draining = hb.role, hb.draining
        self.block_size, self.total_blocks = hb.block_size, hb.total_blocks
        self.max_num_seqs = hb.max_num_seqs
        self.update_slots()
        self.update_load()

    def update_slots(self) -> None:
        """The heartbeat's pinned slots, or the adapters placed here when those are more (a
        heartbeat sent before the worker got its latest assignments undercounts)."""
        total = self.hb.adapter_slots_total
        self.slots_full = 0 < total <= max(self.hb.adapter_slots_pinned, len(self.adapter_runs))

    def pin(self, request_id: str, adapter: str) -> bool:
        """Count ``request_id``'s adapter as running here; True when no other request had it."""
        if request_id in self.request_adapters:
            return False  # a commit again (its share changed; its adapter never does): counted
        self.request_adapters[request_id] = adapter
        count = self.adapter_runs.get(adapter, 0)
        self.adapter_runs[adapter] = count + 1
        self.update_slots()
        return count == 0

    def unpin(self, request_id: str) -> str | None:
        """Forget ``request_id``'s adapter; returns it when no request here has it any more."""
        adapter = self.request_adapters.pop(request_id, None)
        if adapter is None:
            return None
        count = self.adapter_runs[adapter] - 1
        if count:
            self.adapter_runs[adapter] = count
            return None
        del self.adapter_runs[adapter]
        self.update_slots()
        return adapter

    @property
    def committed_blocks(self) -> int:
        return self.committed

    def has_room(self, blocks: int) -> bool:
        return not self.draining and self.has_slot and blocks <= self.free_blocks

    def update_load(self) -> None:
        n, most = len(self.requests), self.max_num_seqs
        self.load = n / max(1, most)
        self.has_slot = n < most
        self.free_blocks = self.total_blocks - self.committed

    def adapter_cost(self, adapter: str | None, resident: bool) -> int:
        """How placement ranks this worker for ``adapter``: 0 it holds it (or none is asked),
        1 it would page it into a slot, 2 every slot is pinned, so the request would wait here.
        A request placed here for ``adapter`` and still running counts as holding it."""
        if adapter is None or resident or adapter in self.adapter_runs:
            return 0
        return 2 if self.slots_full else 1

    @property
    def placeable(self) -> bool:
        return not self.draining and not self.suspect
