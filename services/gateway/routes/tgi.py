"""``POST /generate``, ``/generate_stream`` and ``/``: LoRAX's and TGI's native API (``tgi.py``);
``/generate`` also takes SGLang's bodies (``routes/sglang.py``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import cache
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from loraplex.errors import LoraplexError
from loraplex.gateway.deps import ServiceDep, TenantDep
from loraplex.gateway.errors import InvalidParamError, classify, renamed
from loraplex.gateway.generation import Generation
from loraplex.gateway.peer import PeerProbe, still_connected
from loraplex.gateway.responder import SSEResponse, all_of, until_disconnected
from loraplex.gateway.routes import sglang
from loraplex.gateway.schemas import validated
from loraplex.gateway.service import GatewayService
from loraplex.gateway.sglang import is_sglang
from loraplex.gateway.tgi import (
    PARAM_NAMES,
    TGIRequest,
    finish_reason,
    mean_logprob,
    prefill_tokens,
    stream_events,
    to_completion,
    tokens,
)
from loraplex.model.config import ModelConfig

router = APIRouter(tags=["LoRAX / TGI"])


@cache
def _ends(model_dir: str) -> frozenset[int]:
    return frozenset(ModelConfig.from_dir(model_dir).eos_token_ids)


def _token_kinds(service: GatewayService) -> tuple[frozenset[int], frozenset[int]]:
    """(EOS ids, special ids): what ended an answer, and which tokens TGI marks special."""
    tok = service.tokenizer
    eos = _ends(service.settings.model_dir) | {t for t in (tok.eos_token_id,) if t is not None}
    return eos, eos | {t for t in (tok.bos_token_id,) if t is not None}


@router.post("/", summary="Generate text, streamed when the body says so (TGI)")
async def generate_root(
    body: TGIRequest, tenant: TenantDep, service: ServiceDep, request: Request
) -> Response:
    # lorax-client and huggingface_hub's InferenceClient post here; not streamed, the answer is
    # a list of one (TGI's compatibility route)
    return await _answer(body, tenant.name, service, request, body.stream, as_list=True)


@router.post("/generate", summary="Generate text (LoRAX / TGI, or SGLang by its body)")
async def generate(
    raw: Annotated[dict[str, Any], Body()], tenant: TenantDep, service: ServiceDep, request: Request
) -> Response:
    # One path, two APIs: SGLang's bodies hold "text" or "input_ids", LoRAX's "inputs".
    if is_sglang(raw):
        return await sglang.generate(raw, tenant.name, service, request, _token_kinds(service)[0])
    body = validated(TGIRequest, raw)
    return await _answer(body, tenant.name, service, request, body.stream)


@router.post("/generate_stream", summary="Generate text as server-sent events (LoRAX / TGI)")
async def generate_stream(
    body: TGIRequest, tenant: TenantDep, service: ServiceDep, request: Request
) -> Response:
    return await _answer(body, tenant.name, service, request, True)


async def _answer(
    body: TGIRequest,
    tenant: str,
    service: GatewayService,
    request: Request,
    stream: bool,
    as_list: bool = False,
) -> Response:
    try:
        completion = to_completion(body, service.settings.model_id, stream)
        prompts = await service.prepare_completion(completion, tenant)
    except InvalidParamError as e:
        raise renamed(e, PARAM_NAMES) from e
    n = body.parameters.best_of or 1
    gens = await service.start_choices(prompts, n, still_connected(request.scope))
    if n > 1:  # never streamed (to_completion refused it)
        whole = await _best_of(body, service, request, gens)
        return JSONResponse([whole] if as_list else whole)
    (gen,) = gens
    probe = PeerProbe.from_scope(request.scope)
    try:
        first = await until_disconnected(request.receive, gen.next(), probe)
        if not stream:
            text = await until_disconnected(request.receive, gen.collect(first), probe)
            await gen.aclose()  # done: its stream queue, metrics and resubmit entry go
            whole = _whole(body, service, gen, text)
            return JSONResponse([whole] if as_list else whole)
    except BaseException:
        await gen.aclose()
        raise
    return SSEResponse(_events(body, service, gen, first), gen.aclose)


async def _best_of(
    body: TGIRequest, service: GatewayService, request: Request, gens: list[Generation]
) -> dict[str, Any]:
    """TGI's ``best_of``: every answer in full, the best first (``mean_logprob``), the others
    in ``details.best_of_sequences``."""

    async def text_of(g: Generation) -> str:
        return await g.collect(await g.next())

    probe = PeerProbe.from_scope(request.scope)
    try:
        texts = await until_disconnected(request.receive, all_of([text_of(g) for g in gens]), probe)
    finally:
        for g in gens:
            await g.aclose()
    ranked = sorted(zip(gens, texts, strict=True), key=lambda gt: -mean_logprob(gt[0].logprobs))
    (best, text), others = ranked[0], ranked[1:]
    whole = _whole(body, service, best, text)
    if "details" in whole:
        sequences = []
        for g, t in others:
            seq = _whole(body, service, g, t)
            details = {k: v for k, v in seq["details"].items() if k != "prompt_tokens"}
            sequences.append({"generated_text": seq["generated_text"], **details})
        whole["details"]["best_of_sequences"] = sequences
    return whole


def _details(service: GatewayService, gen: Generation, ids: list[int]) -> dict[str, Any]:
    eos, _ = _token_kinds(service)
    reason = finish_reason(gen.finish_reason, ids[-1] if ids else None, eos)
    return {
        "finish_reason": reason,
        "prompt_tokens": gen.prompt_tokens,
        "generated_tokens": gen.completion_tokens,
        "seed": None,
    }


def _whole(body: TGIRequest, service: GatewayService, gen: Generation, text: str) -> dict:
    head = body.inputs if body.parameters.return_full_text else ""
    out: dict[str, Any] = {"generated_text": head + text}
    if body.parameters.details:
        ids = gen.received_token_ids or []
        _, special = _token_kinds(service)
        toks = tokens(ids, "", gen.logprobs, special)
        for t in toks:  # whole answers: each token's own text, as TGI gives it
            t["text"] = service.tokenizer.decode([t["id"]], False)
        out["details"] = {
            **_details(service, gen, ids),
            "seed": body.parameters.seed,
            "prefill": (
                prefill_tokens(gen.prompt_from(0)) if body.parameters.decoder_input_details else []
            ),
            "tokens": toks,
        }
    return out


def _sse(data: dict[str, Any]) -> str:
    return f"data:{json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


async def _events(
    body: TGIRequest, service: GatewayService, gen: Generation, delta: Any
) -> AsyncIterator[str]:
    _, special = _token_kinds(service)
    head = body.inputs if body.parameters.return_full_text else ""
    text, ids, index = head, [], 0
    try:
        while delta is not None:
            events = stream_events(delta, index, special)
            index += len(events)
            text += delta.text
            ids += delta.token_ids
            if delta.finish_reason is not None:
                events[-1]["generated_text"] = text
                events[-1]["details"] = {
                    **_details(service, gen, ids),
                    "seed": body.parameters.seed,
                }
            for event in events:
                yield _sse(event)
            delta = await gen.next()
    except LoraplexError as e:
        error = classify(e)[1]["error"]
        yield _sse({"error": error["message"], "error_type": error["type"]})
