"""Automatic prefix caching: full KV blocks are remembered by a hash of everything before them.

A block's key chains its parent's key, a namespace (the adapter: LoRA changes K/V, so two
adapters never share blocks) and the block's own token ids, so one lookup walks a prompt's
blocks from the start and stops at the first miss.  Only full blocks are cached, so a shared
block is never written again.

``CachingBlockAllocator`` keeps a freed block's contents while nobody needs the space: a block
whose last reference goes away becomes *evictable* (still findable, counted as free) and is only
reused, least recently freed first, when the free list is empty.  Pure Python, no torch.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence

from loraplex.kvcache.block_allocator import BlockAllocator

BlockKey = bytes


def block_keys(
    token_ids: Sequence[int],
    block_size: int,
    namespace: str,
    parent: BlockKey | None = None,
    start: int = 0,
) -> list[BlockKey]:
    """Keys of the full blocks of ``token_ids[start:]``; ``parent`` is the key of the block
    before ``start`` (None at the beginning of a sequence).  A stable hash (blake2b), the same in
    every process, so a decode worker can tell which blocks of a hand-over it already holds."""
    if parent is None:
        parent = hashlib.blake2b(namespace.encode(), digest_size=16).digest()
    keys = []
    for i in range(start, len(token_ids) - block_size + 1, block_size):
        block = struct.pack(f"<{block_size}q", *token_ids[i : i + block_size])
        parent = hashlib.blake2b(parent + block, digest_size=16).digest()
        keys.append(parent)
    return keys


def prefix_block_keys(token_ids: Sequence[int], block_size: int, namespace: str) -> list[BlockKey]:
    """Keys of the blocks a new sequence may reuse: its full blocks before its last token (that
    token must run to give logits, so the block it lands in is always the sequence's own)."""
    reusable = (len(token_ids) - 1) // block_size
    return block_keys(token_ids[: reusable * block_size], block_size, namespace)


class CachingBlockAllocator(BlockAllocator):
    """A ``BlockAllocator`` whose freed, registered blocks stay findable until evicted."""

    caches_prefixes = True

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size)
        self._by_key: dict[BlockKey, int] = {}
        self._key_of: dict[int, BlockKey] = {}
        self._namespace_of: dict[int, str] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()  # ref 0, content kept; LRU first

    @property
    def num_free(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def num_cached(self) -> int:
        return len(self._by_key)

    def _take_free(self) -> int:
        if self._free:
            return self._free.pop()
        # Reuse the least recently freed cached block: forget what it held.
        b, _ = self._evictable.popitem(last=False)
        del self._by_key[self._key_of.pop(b)]
        del self._namespace_of[b]
        return b

    def _released(self, block: int) -> None:
        if block in self._key_of:
            self._evictable[block] = None
        else:
            self._free.append(block)

    # ---- prefix reuse ---------------------------------------------------------------------
    def lookup(self, keys: Sequence[BlockKey]) -> list[int]:
        """Blocks holding the longest cached prefix of ``keys`` (no references taken)."""
        hit = []
        for k in keys:
            b = self._by_key.get(k)
            if b is None:
                break
            hit.append(b)
        return hit

    def revive_cost(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks`` are evictable, i.e. count as free until ``acquire``d."""
        return sum(1 for b in blocks if self._refs[b] == 0)

    def acquire(self, blocks: Sequence[int]) -> None:
        """Take a reference to cached blocks found by ``lookup``."""
        for b in blocks:
            if b not in self._key_of:
                raise ValueError(f"block {b} holds no cached prefix")
            if self._refs[b] == 0:
                del self._evictable[b]
            self._refs[b] += 1

    def register(self, block: int, key: BlockKey, namespace: str = "") -> None:
        """Record that ``block`` (allocated, full) holds the tokens that ``key`` names, computed
        under ``namespace`` (the adapter).  When another block already holds them, the first one
        stays the cached copy."""
        if self._refs[block] == 0:
            raise ValueError(f"block {block} is not allocated")
        if key in self._by_key or block in self._key_of:
            return
        self._by_key[key] = block
        self._key_of[block] = key
        self._namespace_of[block] = namespace

    def forget_namespace(self, namespace: str) -> int:
        """Drop every cached prefix computed under ``namespace`` (an adapter that was removed or
        replaced: its K/V must never be reused); returns how many blocks were dropped."""
        blocks = [b for b, ns in self._namespace_of.items() if ns == namespace]
        for b in blocks:
            del self._by_key[self._key_of.pop(b)]
            del self._namespace_of[b]
            if b in self._evictable:
                del self._evictable[b]
                self._free.append(b)
        return len(blocks)

    def reset(self) -> None:
        """Forget every cached prefix (evictable blocks return to the free list)."""
        for b in self._evictable:
            self._free.append(b)
        self._evictable.clear()
        self._by_key.clear()
        self._key_of.clear()
        self._namespace_of.clear()
