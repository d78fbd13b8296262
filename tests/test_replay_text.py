"""A migrated request's text, from the engine through the worker's ``Publisher`` to the gateway's
``Generation``: the dead worker's last delta never reached the gateway (its progress did reach the
scheduler), the new worker replays every token so far with its text from offset 0, and the client
gets the uninterrupted text, each character once.  One detokenizer: the worker's."""

from __future__ import annotations

import asyncio
import time

import pytest

from loraplex import LLM, SamplingParams
from loraplex.bus_memory import MemoryHub
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.outputs import StepOutput
from loraplex.gateway.generation import Generation
from loraplex.gateway.metrics import GatewayMetrics
from loraplex.gateway.streams import StreamMessage
from loraplex.protocol import SubmitRequest, TokenDelta
from loraplex.terminal import serve_stream
from loraplex.tooling.demo import write_demo_model
from loraplex.worker.active import Active
from loraplex.worker.publish import Publisher

PROMPT = [5, 6, 7, 8, 9, 10, 11]
GREEDY = SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> LLMEngine:
    demo = write_demo_model(tmp_path_factory.mktemp("replay-text"), num_adapters=0)
    return LLM(demo.model_dir, dtype="float32", device="cpu", block_size=4).engine


def _outputs(engine: LLMEngine, rid: str, params: SamplingParams, generated: list[int]):  # type: ignore[no-untyped-def]
    engine.add_request(rid, PROMPT, params, generated=generated)
    outs: list[StepOutput] = []
    while engine.has_unfinished():
        outs += engine.step()
    assert all(o.error is None for o in outs)
    return outs


async def _published(sub: SubmitRequest, req: Active, outs: list[StepOutput]) -> list[TokenDelta]:
    """What a worker sends the gateway for these outputs."""
    hub = MemoryHub()
    worker, gateway = hub.connect("worker"), hub.connect("gateway")
    got: list[TokenDelta] = []

    async def on_delta(m: TokenDelta) -> None:
        got.append(m)

    await serve_stream(gateway, sub.gateway_id, on_delta, TokenDelta)
    publisher = Publisher(worker, "w")
    for out in outs:
        await publisher.tokens(req, out)
    await worker.flush()
    for _ in range(100):
        await asyncio.sleep(0)
    await worker.close()
    await gateway.close()
    return got


async def _shown(engine: LLMEngine, deltas: list[TokenDelta]) -> tuple[str, int, str | None]:
    queue: asyncio.Queue[StreamMessage] = asyncio.Queue()
    for d in deltas:
        queue.put_nowait(d)

    async def closed(_: Generation) -> None:
        return None

    gen = Generation(
        request_id="r",
        tenant="t",
        prompt_ids=PROMPT,
        queue=queue,
        tokenizer=engine.tokenizer,
        timeout_s=1.0,
        metrics=GatewayMetrics(),
        on_close=closed,
        arrival=time.monotonic(),
    )
    text = await gen.collect()
    await gen.aclose()
    return text, gen.completion_tokens, gen.finish_reason


def _stop_spanning(engine: LLMEngine) -> SamplingParams:
    """A stop string that begins in token 3 and ends after token 4: at a resume after 4 tokens
    its start is text the detokenizer holds back."""
    full = [t for o in _outputs(engine, "probe", GREEDY, []) for t in o.new_token_ids]
    text, head = engine.tokenizer.decode(full, True), engine.tokenizer.decode(full[:4], True)
    return SamplingParams(
        temperature=0, max_tokens=14, ignore_eos=True, stop=(text[len(head) - 1 : len(head) + 2],)
    )


@pytest.mark.parametrize("stop", [False, True], ids=["plain", "stop-string-across-the-cut"])
@pytest.mark.parametrize("delivered", [0, 2, 3])
async def test_a_replayed_request_shows_the_uninterrupted_text_once(engine, stop, delivered):
    params = _stop_spanning(engine) if stop else GREEDY
    cut = 4  # tokens the dead worker generated; the gateway got the deltas of ``delivered``
    sub = SubmitRequest("r", "t", "gw", PROMPT, params)
    first = _outputs(engine, f"a-{stop}-{delivered}", params, [])
    full = [t for o in first for t in o.new_token_ids]
    assert len(full) > cut
    uninterrupted = await _published(sub, Active(sub, None), first)
    dead = await _published(sub, Active(sub, None), first[:delivered])
    resumed = _outputs(engine, f"b-{stop}-{delivered}", params, full[:cut])
    replay = await _published(sub, Active(sub, None, "", cut, full[:cut]), resumed)
    assert replay[0].token_ids == full[:cut] and replay[0].text_start == 0
    text = engine.tokenizer.decode(full, True)
    if stop:
        text = text[: text.index(params.stop[0])]
    expected = (text, len(full), "stop" if stop else "length")
    assert await _shown(engine, uninterrupted) == expected
    assert await _shown(engine, dead + replay) == expected


@pytest.mark.parametrize("lost", [1, 3, 6])
async def test_a_delta_lost_on_the_bus_is_repaired_by_the_last_one(engine, lost):
    """Core NATS is at-most-once: drop one of the worker's deltas on the way; the last delta's
    full text and count give the client the uninterrupted answer anyway."""
    sub = SubmitRequest("r", "t", "gw", PROMPT, GREEDY)
    outs = _outputs(engine, f"lost-{lost}", GREEDY, [])
    deltas = await _published(sub, Active(sub, None), outs)
    assert deltas[-1].full_text == "".join(d.text for d in deltas)
    full = [t for o in outs for t in o.new_token_ids]
    expected = (engine.tokenizer.decode(full, True), len(full), "length")
    assert await _shown(engine, deltas[:lost] + deltas[lost + 1 :]) == expected
