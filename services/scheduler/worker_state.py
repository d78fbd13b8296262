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

    @property
    def committed_blocks(self) -> int:
        return self.committed

    def has_room(self, blocks: int) -> bool:
        hb = self.hb
        return (
            not hb.draining
            and len(self.requests) < hb.max_num_seqs
            and self.committed + blocks <= hb.total_blocks
        )

    def update_load(self) -> None:
        self.load = len(self.requests) / max(1, self.hb.max_num_seqs)

    @property
    def placeable(self) -> bool:
        return not self.hb.draining and not self.suspect
