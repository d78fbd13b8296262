"""The scheduler's prefix keys: what cache-aware placement compares prompts by.

Keys chain the adapter's name and each full block of ``PREFIX_BLOCK`` tokens, as the workers' own
block keys (``kvcache.prefix_cache.block_keys``) do, and like the worker a prompt's last token's
block is never counted.  They are not the workers' keys, though: a 64-bit chained hash of int
tuples (the same in every process: ints and tuples of ints are not salted), about ten times
cheaper than the workers' blake2b, since they are only ever compared with keys computed the same
way.  A collision costs at most a less useful placement.

One block size for the whole cluster, whatever the workers' KV block sizes: placement ranks
workers by how many of these blocks they probably hold, which orders them as their own blocks
would.  So a gateway can compute a prompt's keys once, beside its tokenization, and send them in
the SUBMIT (``SubmitRequest.prefix_keys``): hashing a long prompt is work that scales out with the
gateways instead of running inside the one scheduler that decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

PREFIX_BLOCK = 16  # tokens per prefix key


@lru_cache(maxsize=4096)
def _namespace(adapter: str) -> int:
    return int.from_bytes(hashlib.blake2b(adapter.encode(), digest_size=8).digest(), "little")


def reusable_blocks(prompt_tokens: int) -> int:
    """How many keys a prompt of ``prompt_tokens`` tokens has (its last token's block never
    counts: a worker always computes that one)."""
    return max(0, (prompt_tokens - 1) // PREFIX_BLOCK)


def prefix_keys(
    adapter: str | None,
    tokens: Sequence[int],
    block_size: int = PREFIX_BLOCK,
    *,
    salt: str = "",
) -> list[int]:
    """Keys of the full blocks a worker could reuse for this prompt (not the last token's),
    chained from its adapter and cache salt (``SubmitRequest.cache_salt``), as workers only
    reuse a prefix within both."""
    reusable = (len(tokens) - 1) // block_size * block_size
    if reusable <= 0:
        return []
    h = _namespace(f"{adapter or ''}\x1f{salt}" if salt else adapter or "")
    t = tuple(tokens[:reusable])  # sliced as tuples below: one copy, not two per block
    keys = []
    append = keys.append
    for i in range(0, reusable, block_size):
        h = hash((h, t[i : i + block_size]))
        append(h)
    return keys
