"""SGLang's native ``POST /generate`` (``sglang.py``); the route is shared with LoRAX's, which
``routes/tgi.py`` serves and hands SGLang-shaped bodies to ``generate``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from loraplex.errors import LoraplexError
from loraplex.gateway.errors import InvalidParamError, classify, renamed
from loraplex.gateway.generation import Generation, TextDelta
from loraplex.gateway.openai_format import DONE
from loraplex.gateway.peer import PeerProbe, still_connected
from loraplex.gateway.responder import SSEResponse, until_disconnected
from loraplex.gateway.schemas import validated
from loraplex.gateway.service import GatewayService
from loraplex.gateway.sglang import (
    PARAM_NAMES,
    SGLangRequest,
    check_logprob_start,
    finish_reason,
    logprob_fields,
    to_completions,
)


async def generate(
    raw: dict[str, Any],
    tenant: str,
    service: GatewayService,
    request: Request,
    ends: frozenset[int],
) -> Response:
    """``ends``: the model's EOS ids (what SGLang reports as ``matched``)."""
    body = validated(SGLangRequest, raw)
    try:
        prompts = [
            p
            for completion in to_completions(body, service.settings.model_id)
            for p in await service.prepare_completion(completion, tenant)
        ]
        check_logprob_start(body, prompts)
    except InvalidParamError as e:
        given = {"prompt": "input_ids"} if body.input_ids is not None else {}
        raise renamed(e, PARAM_NAMES | given) from e
    n = body.sampling_params.n
    gens = await service.start_choices(prompts, n, still_connected(request.scope))
    probe = PeerProbe.from_scope(request.scope)
    single = not body.is_batch and n == 1
    try:
        firsts = await until_disconnected(
            request.receive, asyncio.gather(*(g.next() for g in gens)), probe
        )
        if body.scores_prompt:  # the scored prompt came first: decode it off the event loop
            await asyncio.to_thread(lambda: [g.prompt_logprobs() for g in gens])
        if not body.stream:
            collected = (g.collect(f) for g, f in zip(gens, firsts, strict=True))
            texts = await until_disconnected(request.receive, asyncio.gather(*collected), probe)
            outs = [_answer(g, t, ends, body) for g, t in zip(gens, texts, strict=True)]
            for g in gens:
                await g.aclose()
            return JSONResponse(outs[0] if single else outs)
    except BaseException:
        for g in gens:
            await g.aclose()
        raise

    async def close() -> None:
        for g in gens:
            await g.aclose()

    return SSEResponse(_events(gens, list(firsts), ends, single, body), close)


def _meta(gen: Generation, ends: frozenset[int]) -> dict[str, Any]:
    ids = gen.received_token_ids or []
    return {
        "id": gen.request_id,
        "finish_reason": finish_reason(
            gen.finish_reason, gen.completion_tokens, ids[-1] if ids else None, ends
        ),
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "cached_tokens": gen.cached_tokens,
    }


def _answer(
    gen: Generation, text: str, ends: frozenset[int], body: SGLangRequest
) -> dict[str, Any]:
    meta = _meta(gen, ends)
    if body.return_logprob:
        # -1 (SGLang's default): the prompt's last token, which needs no scoring
        start = body.logprob_start_len if body.scores_prompt else gen.prompt_tokens - 1
        top, with_text = body.top_logprobs_num, body.return_text_in_logprobs
        meta |= logprob_fields(gen.logprobs, gen.prompt_from(start), top, with_text)
    return {"text": text, "meta_info": meta}


async def _events(
    gens: list[Generation],
    firsts: list[TextDelta | None],
    ends: frozenset[int],
    single: bool,
    body: SGLangRequest,
) -> AsyncIterator[str]:
    """Each choice's text so far, as SGLang streams it; choices in turn (``index`` when there
    are several), then ``[DONE]``."""
    try:
        for index, (gen, delta) in enumerate(zip(gens, firsts, strict=True)):
            text = ""
            while delta is not None:
                text += delta.text
                event = _answer(gen, text, ends, body)
                if not single:
                    event["index"] = index
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
                delta = await gen.next()
    except LoraplexError as e:
        yield f"data: {json.dumps(classify(e)[1], ensure_ascii=False)}\n\n"
    yield DONE
