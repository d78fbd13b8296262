"""The placement scan ``WorkerRegistry.place`` replaced, kept as its reference.

It looks at every live worker of each role for every request: O(workers x prompt blocks).  The
registry's indexed ``place`` makes the same choice whenever a role has at most ``SCAN`` workers
within the prefix balance and each adapter/prefix is held by at most ``ADAPTER_EXACT``/``HOLDERS``
workers (``tests/scheduler/test_placement_index.py`` checks it on random clusters); beyond that it
looks at a bounded sample (``workers.py``).  ``bench/scheduler.py`` times both.
"""

from __future__ import annotations

from collections.abc import Callable

from loraplex.kvcache.block_allocator import blocks_for
from loraplex.scheduler.placement import Placement
from loraplex.scheduler.worker_state import WorkerState
from loraplex.scheduler.workers import WorkerRegistry


def place_by_scan(
    registry: WorkerRegistry,
    adapter: str | None,
    prompt_tokens: int,
    total_tokens: int,
    cached_blocks: Callable[[WorkerState], int] | None = None,
) -> Placement | None:
    """``WorkerRegistry.place`` as it was: every worker is a candidate."""
    balance = registry.prefix_balance

    def placeable(roles: tuple[str, ...]) -> list[WorkerState]:
        return [
            w
            for w in registry.workers.values()
            if w.hb.role in roles and not w.hb.draining and not w.suspect
        ]

    def best(candidates: list[WorkerState], blocks_of: int, prefix: bool) -> WorkerState | None:
        fits = [w for w in candidates if w.has_room(blocks_for(blocks_of, w.hb.block_size))]
        if not fits:
            return None
        least = min(w.load for w in fits)

        def cached(w: WorkerState) -> int:
            if not prefix or cached_blocks is None or w.load > least + balance:
                return 0
            return cached_blocks(w)

        return min(
            fits,
            key=lambda w: (
                -cached(w),
                w.adapter_cost(adapter, adapter in w.hb.adapters),
                w.load,
                w.hb.worker_id,
            ),
        )

    prefill = best(placeable(("prefill",)), prompt_tokens, True)
    decode = best(placeable(("decode",)), total_tokens, True) if prefill else None
    colocated = best(placeable(("both",)), total_tokens, True)
    if (
        prefill
        and decode
        and (colocated is None or max(prefill.load, decode.load) <= colocated.load)
    ):
        return Placement(prefill.hb.worker_id, decode.hb.worker_id)
    if colocated:
        return Placement(colocated.hb.worker_id, "")
    return None
