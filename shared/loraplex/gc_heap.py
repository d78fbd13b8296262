"""Keep what a service built at start-up out of the garbage collector's full collections.

A full (generation 2) collection walks every container object the process holds, and everything
else waits for it.  Most of them are built once at start-up: modules, classes, functions, the
model's and the tokenizer's objects.  Measured on this project's CPU box: a worker process holds
about 186,000 of them after its imports, and each full collection took 84 ms (a gateway: 89,000
and 42 ms; a scheduler: 48,000 and 14 ms), a stall of every request in the batch or the queue.
``gc.freeze()`` after start-up (as vLLM does after its engine starts) moves them to a permanent
generation that collections skip; what a service allocates while serving is collected as before.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect start-up garbage, then freeze everything left; returns the frozen object count.
    Call once a service is ready to serve (its model loaded and warmed up)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
