"""BlockAllocator: free list, allocation, shared references, errors, and blocks_for."""

from __future__ import annotations

import pytest

from loraplex.kvcache.block_allocator import BlockAllocator, blocks_for


@pytest.mark.parametrize(
    ("tokens", "block_size", "expected"),
    [
        (0, 4, 0),
        (1, 4, 1),
        (3, 4, 1),
        (4, 4, 1),
        (5, 4, 2),
        (8, 4, 2),
        (9, 4, 3),
        (17, 16, 2),
        (7, 1, 7),
    ],
)
def test_blocks_for_is_ceiling_division(tokens, block_size, expected):
    assert blocks_for(tokens, block_size) == expected


def test_blocks_for_always_covers_the_tokens():
    for block_size in (1, 2, 3, 16):
        for tokens in range(0, 50):
            n = blocks_for(tokens, block_size)
            assert n * block_size >= tokens
            assert (n - 1) * block_size < tokens or n == 0


def test_fresh_allocator_has_every_block_free():
    alloc = BlockAllocator(num_blocks=6, block_size=4)
    assert alloc.num_free == 6
    assert alloc.num_used == 0
    assert all(alloc.ref_count(b) == 0 for b in range(6))
    assert alloc.can_allocate(6)
    assert not alloc.can_allocate(7)


@pytest.mark.parametrize(("num_blocks", "block_size"), [(0, 4), (4, 0), (-1, 4)])
def test_rejects_non_positive_sizes(num_blocks, block_size):
    with pytest.raises(ValueError):
        BlockAllocator(num_blocks, block_size)


def test_allocate_hands_out_distinct_blocks_with_one_reference():
    alloc = BlockAllocator(num_blocks=8, block_size=4)
    a = alloc.allocate(3)
    b = alloc.allocate(4)
    assert len(a) == 3 and len(b) == 4
    assert len(set(a) | set(b)) == 7
    assert all(0 <= x < 8 for x in a + b)
    assert all(alloc.ref_count(x) == 1 for x in a + b)
    assert alloc.num_free == 1
    assert alloc.num_used == 7
    # the one left is exactly the block not handed out
    (rest,) = alloc.allocate(1)
    assert rest not in a + b
    assert alloc.num_free == 0


def test_allocate_zero_is_a_no_op():
    alloc = BlockAllocator(num_blocks=2, block_size=4)
    assert alloc.allocate(0) == []
    assert alloc.num_free == 2


def test_free_returns_blocks_for_reuse():
    alloc = BlockAllocator(num_blocks=4, block_size=4)
    a = alloc.allocate(4)
    assert alloc.num_free == 0
    alloc.free(a[:2])
    assert alloc.num_free == 2
    assert alloc.ref_count(a[0]) == 0 and alloc.ref_count(a[2]) == 1
    again = alloc.allocate(2)
    assert set(again) == set(a[:2])
    assert all(alloc.ref_count(x) == 1 for x in again)


def test_out_of_blocks_raises_memory_error_and_changes_nothing():
    alloc = BlockAllocator(num_blocks=3, block_size=4)
    held = alloc.allocate(2)
    with pytest.raises(MemoryError, match="need 2 KV blocks, 1 free"):
        alloc.allocate(2)
    # the failed call did not take the last block
    assert alloc.num_free == 1
    assert alloc.ref_count(held[0]) == 1
    assert len(alloc.allocate(1)) == 1
    with pytest.raises(MemoryError):
        alloc.allocate(1)


def test_share_keeps_block_until_last_owner_frees_it():
    alloc = BlockAllocator(num_blocks=4, block_size=4)
    blocks = alloc.allocate(2)
    alloc.share(blocks)
    alloc.share(blocks[:1])
    assert alloc.ref_count(blocks[0]) == 3
    assert alloc.ref_count(blocks[1]) == 2
    alloc.free(blocks)
    assert alloc.num_free == 2  # both still referenced
    assert alloc.ref_count(blocks[0]) == 2 and alloc.ref_count(blocks[1]) == 1
    alloc.free(blocks)
    assert alloc.num_free == 3  # blocks[1] is back
    assert alloc.ref_count(blocks[1]) == 0
    alloc.free(blocks[:1])
    assert alloc.num_free == 4
    assert alloc.ref_count(blocks[0]) == 0


def test_shared_block_is_not_handed_out_again():
    alloc = BlockAllocator(num_blocks=2, block_size=4)
    (b,) = alloc.allocate(1)
    alloc.share([b])
    alloc.free([b])
    (other,) = alloc.allocate(1)
    assert other != b
    with pytest.raises(MemoryError):
        alloc.allocate(1)


def test_share_of_unallocated_block_is_an_error():
    alloc = BlockAllocator(num_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="not allocated"):
        alloc.share([2])
    (b,) = alloc.allocate(1)
    alloc.free([b])
    with pytest.raises(ValueError, match="not allocated"):
        alloc.share([b])


def test_double_free_is_an_error():
    alloc = BlockAllocator(num_blocks=4, block_size=4)
    blocks = alloc.allocate(2)
    alloc.free(blocks)
    with pytest.raises(ValueError, match="double free"):
        alloc.free(blocks[:1])
    # the free list did not grow past the pool
    assert alloc.num_free == 4
    assert len(set(alloc.allocate(4))) == 4


def test_free_of_never_allocated_block_is_an_error():
    alloc = BlockAllocator(num_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="double free"):
        alloc.free([3])
    assert alloc.num_free == 4


def test_many_cycles_never_leak_or_duplicate():
    alloc = BlockAllocator(num_blocks=10, block_size=2)
    owned: list[list[int]] = []
    for i in range(200):
        if i % 3 != 2 and alloc.can_allocate(3):
            owned.append(alloc.allocate(3))
        elif owned:
            alloc.free(owned.pop(0))
        flat = [b for group in owned for b in group]
        assert len(flat) == len(set(flat))
        assert alloc.num_used == len(flat)
    for group in owned:
        alloc.free(group)
    assert alloc.num_free == 10
