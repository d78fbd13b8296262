"""A worker that cannot reach the adapter store (Redis down; a restarted worker starts with no
adapter in memory) fails the request *retryably*, so the scheduler places it again, perhaps on a
worker that holds the adapter; it used to end it with a terminal 400, as if the request were at
fault.  A missing adapter stays a terminal 404.  ``Preparation`` with a pager and a publisher that
only record (the bus and the store are not involved in this decision)."""

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


def _resolve(error: Exception, report_unavailable: bool = True) -> tuple[object, list]:
    publisher = _Publisher()
    prep = Preparation(_Pager(error), None, publisher)  # type: ignore[arg-type]
    sub = SubmitRequest("r", "t", "gw", [1, 2], SamplingParams(max_tokens=2), adapter="t/a")
    got = asyncio.run(prep.resolve_adapter(Active(sub, None, "", 0, []), report_unavailable))
    return got, publisher.failed


def test_an_unreachable_store_is_a_retryable_failure_not_the_request_s_fault() -> None:
    unavailable = StoreUnavailableError("adapter store: Redis is unavailable, try again")
    assert _resolve(unavailable) == (False, [(503, True)])
    # A K/V hand-over's decode side leaves the report to the prefill worker's refusal.
    assert _resolve(unavailable, report_unavailable=False) == (False, [])
    assert _resolve(AdapterNotFoundError("no adapter t/a")) == (False, [(404, False)])
