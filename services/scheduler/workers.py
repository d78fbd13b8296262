"""What the scheduler knows about workers: liveness, committed capacity, adapter residency.

Pure Python bookkeeping.  Capacity is *committed* here, not guessed from heartbeats alone: every
request placed on a worker holds a batch slot and the KV blocks its full length may need until the
worker reports it done, so work never queues inside a worker and the policy's order is what runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from loraplex.kvcache.block_allocator import blocks_for
from loraplex.protocol import WorkerHeartbeat


@dataclass
class WorkerState:
    hb: WorkerHeartbeat
    last_seen: float
    requests: dict[str, int] = field(default_factory=dict)  # request_id -> committed KV blocks
    # A peer reported it unreachable (no responders, K/V refused): nothing is placed on it until
    # its next heartbeat, so a retry cannot go straight back to a worker that just died.
    suspect: bool = False

    @property
    def committed_blocks(self) -> int:
        return sum(self.requests.values())

    def has_room(self, blocks: int) -> bool:
        hb = self.hb
        return (
            not hb.draining
            and len(self.requests) < hb.max_num_seqs
            and self.committed_blocks + blocks <= hb.total_blocks
        )

    @property
    def load(self) -> float:
        return len(self.requests) / max(1, self.hb.max_num_seqs)


@dataclass(frozen=True)
class Placement:
    prefill: str
    decode: str  # "" when the prefill worker is colocated (role "both") and decodes itself


class WorkerRegistry:
    def __init__(self, heartbeat_timeout_s: float = 3.0, prefix_balance: float = 0.25) -> None:
        self.timeout = heartbeat_timeout_s
        # Prefix affinity may pick a worker at most this much busier (share of its batch) than
        # the least loaded one that has room, so one hot system prompt cannot pile onto a worker.
        self.prefix_balance = prefix_balance
        self.workers: dict[str, WorkerState] = {}

    def heartbeat(self, hb: WorkerHeartbeat, now: float) -> bool:
        """Record a heartbeat; True when the worker is new."""
        state = self.workers.get(hb.worker_id)
        if state is None:
            self.workers[hb.worker_id] = WorkerState(hb, now)
            return True
        state.hb, state.last_seen, state.suspect = hb, now, False
        return False

    def suspect(self, worker_id: str) -> None:
        """Place nothing on ``worker_id`` until it proves alive with a heartbeat."""
        w = self.workers.get(worker_id)
        if w is not None:
            w.suspect = True

    def holds(self, worker_id: str, request_id: str) -> bool:
        """Whether ``worker_id``'s latest heartbeat lists ``request_id`` as held."""
        w = self.workers.get(worker_id)
        return w is not None and request_id in (w.hb.active or ())

    def expire(self, now: float) -> list[WorkerState]:
        """Remove and return workers whose heartbeats stopped."""
        dead = [w for w in self.workers.values() if now - w.last_seen > self.timeout]
        for w in dead:
            del self.workers[w.hb.worker_id]
        return dead

    def _alive(self, roles: tuple[str, ...]) -> list[WorkerState]:
        return [w for w in self.workers.values() if w.hb.role in roles and not w.hb.draining]

    def _placeable(self, roles: tuple[str, ...]) -> list[WorkerState]:
        return [w for w in self._alive(roles) if not w.suspect]

    def can_serve(self) -> bool:
        """Some live worker set can run a request end to end (colocated, or prefill + decode)."""
        if self._alive(("both",)):
            return True
        return bool(self._alive(("prefill",))) and bool(self._alive(("decode",)))

    def could_ever_fit(self, prompt_tokens: int, total_tokens: int) -> bool:
        """Whether an idle set of live workers could hold the request at all."""

        def fits(roles: tuple[str, ...], tokens: int) -> bool:
            return any(
                blocks_for(tokens, w.hb.block_size) <= w.hb.total_blocks for w in self._alive(roles)
            )

        if fits(("both",), total_tokens):
            return True
        return fits(("prefill",), prompt_tokens) and fits(("decode",), total_tokens)

    def place(
        self,
        adapter: str | None,
        prompt_tokens: int,
        total_tokens: int,
        cached_blocks: Callable[[WorkerState], int] | None = None,
    ) -> Placement | None:
        """Choose workers with room, preferring the ones that probably hold most of the prompt's
        prefix (``cached_blocks``, within ``prefix_balance`` of the least load),
        then those that hold the adapter, then the least loaded.

        Preferences only order workers that have room, so a request never waits for a particular
        worker while another could take it (no starvation by affinity).
        """

        def best(candidates: list[WorkerState], blocks_of: int, prefix: bool) -> WorkerState | None:
            fits = [w for w in candidates if w.has_room(blocks_for(blocks_of, w.hb.block_size))]
            if not fits:
                return None
            least = min(w.load for w in fits)

            def cached(w: WorkerState) -> int:
                if not prefix or cached_blocks is None or w.load > least + self.prefix_balance:
                    return 0
                return cached_blocks(w)

            return min(
                fits,
                key=lambda w: (
                    -cached(w),
                    adapter not in w.hb.adapters if adapter else False,
                    w.load,
                    w.hb.worker_id,
                ),
            )

        prefill = best(self._placeable(("prefill",)), prompt_tokens, True)
        # Decode workers cache the prompts handed to them too, and skip receiving those blocks.
        decode = best(self._placeable(("decode",)), total_tokens, True) if prefill else None
        colocated = best(self._placeable(("both",)), total_tokens, True)
        if (
            prefill
            and decode
            and (colocated is None or max(prefill.load, decode.load) <= colocated.load)
        ):
            return Placement(prefill.hb.worker_id, decode.hb.worker_id)
        if colocated:
            return Placement(colocated.hb.worker_id, "")
        return None

    def commit(self, worker_id: str, request_id: str, tokens: int) -> None:
        w = self.workers.get(worker_id)
        if w is not None:
            w.requests[request_id] = blocks_for(tokens, w.hb.block_size)

    def release(self, worker_id: str, request_id: str) -> None:
        w = self.workers.get(worker_id)
        if w is not None:
            w.requests.pop(request_id, None)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            wid: {
                "requests": len(w.requests),
                "committed_blocks": w.committed_blocks,
                "total_blocks": w.hb.total_blocks,
            }
            for wid, w in self.workers.items()
        }
