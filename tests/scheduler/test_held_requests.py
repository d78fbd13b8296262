"""The SUBMITs the scheduler holds stay out of the garbage collector's walks, and still travel
as lists (``scheduler/held_requests.py``)."""

from __future__ import annotations

import gc

from loraplex.codec import decode, encode
from loraplex.protocol import PrefillAssign, SubmitRequest, WorkerHeartbeat
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.held_requests import held
from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings

PROMPT = list(range(1000, 1300))


def _submit(rid: str = "r1", keys: list[int] | None = None) -> SubmitRequest:
    return SubmitRequest(
        rid, "t1", "gw", list(PROMPT), SamplingParams(max_tokens=8), prefix_keys=keys
    )


def test_a_held_request_is_untracked_and_the_same_request() -> None:
    sub = _submit(keys=[11, 12, 13])
    kept = held(sub)
    gc.collect()
    assert not gc.is_tracked(kept.prompt_token_ids) and not gc.is_tracked(kept.prefix_keys)
    assert list(kept.prompt_token_ids) == PROMPT and list(kept.prefix_keys or ()) == [11, 12, 13]
    assert held(_submit()).prefix_keys is None
    # on the wire again (an assignment carries the request): lists, as the workers expect
    back = decode(encode(PrefillAssign(kept, "", 0)), PrefillAssign)
    assert type(back.request.prompt_token_ids) is list and back.request == sub


async def test_the_scheduler_holds_each_submit_as_tuples() -> None:
    service = SchedulerService(SchedulerSettings("nats://unused"), {})
    service.registry.heartbeat(WorkerHeartbeat("w0", "both", 0, 1000, 16, 0, 0, 8), 0.0)
    reply = await service._serve_submit(_submit())
    assert reply.accepted, reply
    kept = service.submits["r1"]
    assert type(kept.prompt_token_ids) is tuple and list(kept.prompt_token_ids) == PROMPT
