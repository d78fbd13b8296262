"""Fixed-size KV-cache blocks: a free list with reference counts (pure Python, no torch)."""

from __future__ import annotations

from collections.abc import Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockAllocator:
    """Hands out block ids; a block returns to the free list when its last reference is freed.

    Reference counts let several owners share a block (forked sequences, prefix reuse, a block
    reserved for an incoming KV transfer).
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() yields low ids first
        self._refs = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def can_allocate(self, n: int) -> bool:
        return n <= self.num_free

    def allocate(self, n: int) -> list[int]:
        if n > self.num_free:
            raise MemoryError(f"need {n} KV blocks, {self.num_free} free")
        out = [self._take_free() for _ in range(n)]
        for b in out:
            self._refs[b] = 1
        return out

    def share(self, blocks: list[int]) -> None:
        """Add one reference to each block (all must be allocated)."""
        for b in blocks:
            if self._refs[b] == 0:
                raise ValueError(f"block {b} is not allocated")
            self._refs[b] += 1

    def free(self, blocks: list[int]) -> None:
        for b in blocks:
            if self._refs[b] == 0:
                raise ValueError(f"double free of block {b}")
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._released(b)

    def ref_count(self, block: int) -> int:
        return self._refs[block]

    # Where free blocks come from and go to (a prefix cache keeps released blocks findable).
    def _take_free(self) -> int:
        return self._free.pop()

    def _released(self, block: int) -> None:
        self._free.append(block)

    # ---- prefix reuse: a plain allocator caches nothing (see CachingBlockAllocator) ---------
    caches_prefixes = False  # callers skip hashing block keys when False

    def lookup(self, keys: Sequence[bytes]) -> list[int]:
        """Blocks holding the longest cached prefix of ``keys``: none here."""
        return []

    def register(self, block: int, key: bytes, namespace: str = "") -> None:
        """Offer a full block's contents for reuse: ignored here."""

    def forget_namespace(self, namespace: str) -> int:
        return 0

    def revive_cost(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks`` (from ``lookup``) count as free until taken."""
        return 0

    def acquire(self, blocks: Sequence[int]) -> None:
        """Take a reference to cached blocks found by ``lookup``."""
        if blocks:
            raise ValueError("this allocator caches no prefixes")

    def can_allocate_after(self, prefix: Sequence[int], n: int) -> bool:
        """Whether cached ``prefix`` blocks (from ``lookup``) and ``n`` new ones can be taken."""
        return self.can_allocate(n + self.revive_cost(prefix))

    def allocate_after(self, prefix: Sequence[int], n: int) -> list[int]:
        """A block table: the cached ``prefix`` blocks (referenced), then ``n`` new blocks."""
        self.acquire(prefix)
        return [*prefix, *self.allocate(n)]
