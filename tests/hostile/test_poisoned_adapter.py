"""The crash test: an adapter that validation would refuse, written straight into Redis (as a store
filled before validation existed would hold it), used with hostile sampling parameters, in the same
batch as another tenant's request.  Only the poisoned requests fail, each with a clean error; the
other tenant's output is exactly what it is alone; no process exits."""

from __future__ import annotations

import asyncio

import pytest

from tests.hostile.harness import ALPHA, BETA, HostileStack
from tests.hostile.poison import (
    POISONS,
    alpha_text,
    assert_failed_cleanly,
    poisoned_requests,
    store_unchecked,
)


@pytest.mark.parametrize("poison", list(POISONS.values()), ids=list(POISONS))
async def test_poisoned_adapter_fails_only_its_requests(hs: HostileStack, ctx, poison):
    name = ctx.fresh_name()
    await store_unchecked(hs, BETA, name, poison(ctx.template))
    alone = await alpha_text(hs, stream=False)
    together, answers = await asyncio.gather(
        alpha_text(hs, stream=True), poisoned_requests(hs, name)
    )
    for r in answers:
        assert_failed_cleanly(r)
    assert together == alone, "the other tenant's output changed next to the poisoned request"
    await asyncio.to_thread(hs.assert_healthy, ALPHA)
    await asyncio.to_thread(hs.assert_healthy, BETA)
