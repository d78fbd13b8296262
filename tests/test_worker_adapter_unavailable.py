"""A worker that cannot reach the adapter store (Redis down; a restarted worker starts with no
adapter in memory) ends the request with a 503, at once; it used to say 400, as if the request
were at fault.  Not retryably: placed again, each attempt held a slot through the store's
retries, and in the chaos soak (``bench/chaos.py --adapters 4 --redis-faults``) other requests
then queued for over a minute.  A missing adapter stays a 404.  ``Preparation`` with a pager and a
publisher that only record (the bus and the store are not involved in this decision)."""

from __future__ import annotations

import asyncio

from loraplex import SamplingParams
from loraplex.adapters.errors import StoreUnavailableError
from loraplex.errors import AdapterNotFoundError
from loraplex.protocol import SubmitRequest
from loraplex.worker.active import Active
from loraplex.worker.prepare import Preparation


class _Pager:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def prepare(self, name: str):  # type: ignore[no-untyped-def]
        raise self.error


class _Publisher:
    def __init__(self) -> None:
        self.failed: list[tuple[int, bool]] = []

    async def fail(self, req: Active, code: int, message: str, retryable: bool) -> None:
        self.failed.append((code, retryable))


def _resolve(error: Exception) -> tuple[object, list]:
    publisher = _Publisher()
    prep = Preparation(_Pager(error), None, publisher)  # type: ignore[arg-type]
    sub = SubmitRequest("r", "t", "gw", [1, 2], SamplingParams(max_tokens=2), adapter="t/a")
    got = asyncio.run(prep.resolve_adapter(Active(sub, None, "", 0, [])))
    return got, publisher.failed


def test_an_unreachable_store_is_a_503_not_the_request_s_fault() -> None:
    unavailable = StoreUnavailableError("adapter store: Redis is unavailable, try again")
    assert _resolve(unavailable) == (False, [(503, False)])
    assert _resolve(AdapterNotFoundError("no adapter t/a")) == (False, [(404, False)])
