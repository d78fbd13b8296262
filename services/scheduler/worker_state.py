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
    # Every adapter slot pinned at its last heartbeat: an adapter it does not hold would wait.
    slots_full: bool = field(init=False)

    def __post_init__(self) -> None:
        self.observe(self.hb, self.last_seen)

    def observe(self, hb: WorkerHeartbeat, now: float) -> None:
        """Take ``hb`` as the worker's latest heartbeat."""
        self.hb, self.last_seen = hb, now
        self.role, self.draining = hb.role, hb.draining
        self.block_size, self.total_blocks = hb.block_size, hb.total_blocks
        self.max_num_seqs = hb.max_num_seqs
        self.slots_full = 0 < hb.adapter_slots_total <= hb.adapter_slots_pinned
        self.update_load()

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
        1 it would page it into a slot, 2 every slot is pinned, so the request would wait here."""
        if adapter is None or resident:
            return 0
        return 2 if self.slots_full else 1

    @property
    def placeable(self) -> bool:
        return not self.draining and not self.suspect
