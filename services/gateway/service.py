"""The gateway's core: model resolution, request preparation, SUBMIT to the scheduler, cancel.

Request lifecycle (as seen from the gateway):

1. ``prepare_*``: unsupported features refused, ``model`` resolved (base model or an adapter the
   tenant may use, else ModelNotFoundError), prompt tokenized, sampling + context validated.
2. ``start``: the request's stream queue is opened, ``SubmitRequest`` is sent to
   ``Subjects.SUBMIT`` as a NATS request; the ``SubmitReply`` accepts it or refuses it with a
   status (SchedulerRejectedError); no answer means SchedulerUnavailableError (503).
3. The route reads ``Generation.next()`` until the final delta, an error or a timeout.
4. ``Generation.aclose()`` (always) closes the queue, records metrics and publishes
   ``CancelRequest`` when the workers have not finished it (client gone, timeout).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from loraplex.adapters.keys import ID_PATTERN
from loraplex.adapters.store import AdapterStore
from loraplex.bus import Bus, BusError, BusTimeoutError, NoRespondersError
from loraplex.errors import AdapterNotFoundError
from loraplex.gateway.answer_size import check_answer_size
from loraplex.gateway.errors import (
    ClientDisconnectedError,
    InvalidParamError,
    ModelNotFoundError,
    SchedulerRejectedError,
    SchedulerUnavailableError,
)
from loraplex.gateway.generation import Generation
from loraplex.gateway.known_adapters import KnownAdapters
from loraplex.gateway.merged_adapters import merged_adapter_id
from loraplex.gateway.metrics import GatewayMetrics
from loraplex.gateway.prepare import Prepared, RequestBuilder
from loraplex.gateway.resubmit import Resubmitter
from loraplex.gateway.schemas import ChatCompletionRequest, CompletionRequest, GenerateRequest
from loraplex.gateway.settings import GatewaySettings
from loraplex.gateway.streams import StreamRouter
from loraplex.prefix_keys import prefix_keys
from loraplex.protocol import (
    AdapterNameAnswer,
    AdapterNameQuery,
    CancelRequest,
    ProtocolError,
    Subjects,
    SubmitReply,
    SubmitRequest,
)
from loraplex.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)
PEER_ASK_S = 0.5  # how long a gateway waits for another's memory of an adapter name


class GatewayService:
    def __init__(
        self,
        settings: GatewaySettings,
        bus: Bus,
        router: StreamRouter,
        tokenizer: Tokenizer,
        adapters: AdapterStore | None,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self._max_answer_bytes = int(settings.max_answer_mb * 1024 * 1024)
        self.bus = bus
        self.router = router
        self.tokenizer = tokenizer
        self.adapters = adapters
        self.metrics = metrics
        self.builder = RequestBuilder(
            tokenizer,
            settings.max_model_len,
            settings.prefix_cache_scope,
            settings.tool_call_parser,
            settings.reasoning_parser,
            settings.exclude_tools_when_tool_choice_none,
        )
        # Open requests, sent again to a new scheduler leader (scheduler replicas).
        self.resubmitter = Resubmitter(bus, router, settings.submit_timeout_s)
        # What each tenant's adapter names meant, to serve them while Redis is unreachable.
        self.known_adapters = KnownAdapters(settings.adapter_stale_s)
        self.started = int(time.time())

    # ---- 1. prepare ------------------------------------------------------------------------
    async def resolve_adapter(self, tenant: str, model: str) -> str | None:
        """None for the base model, else the id (``owner/name``) of the adapter ``model`` names
        for ``tenant`` (as ``name``, or SGLang's ``base-model:name``): its own adapter of that
        name, else the public one (``adapters.keys``)."""
        if model == self.settings.model_id:
            return None
        base, colon, name = model.rpartition(":")
        if colon and base == self.settings.model_id and name:
            model = name  # SGLang's "base:adapter" (adapter names hold no ':')
        if self.adapters is not None:
            adapter = await self.known_adapters.resolve(
                tenant, model, self._ask_store, self._ask_peers
            )
            if adapter is not None:
                return adapter
        raise ModelNotFoundError(
            f"The model {model!r} does not exist or you do not have access to it "
            f"(served: {self.settings.model_id!r} and the adapters listed by GET /v1/models)."
        )

    async def _ask_store(self, tenant: str, model: str) -> str | None:
        """The store's answer: the id of the served adapter ``model`` names for ``tenant``, or
        None (none of that name, or unloaded: an unloaded adapter is not a model, as in vLLM)."""
        assert self.adapters is not None
        try:
            info = await self.adapters.get_for(tenant, model)
        except AdapterNotFoundError:
            return None
        return info.id if info is not None and info.served else None

    async def _ask_peers(self, tenant: str, model: str) -> str | None:
        """Another gateway's memory of ``model`` for ``tenant`` (the store unreachable), or
        None.  An answer must name an adapter of that name: a peer can only confirm a name."""
        query = AdapterNameQuery(tenant, model)
        try:
            answer = await self.bus.request(
                Subjects.ADAPTER_NAMES, query, AdapterNameAnswer, PEER_ASK_S
            )
        except (BusError, ProtocolError):
            return None
        aid = answer.adapter_id
        return aid if ID_PATTERN.fullmatch(aid) and aid.endswith(f"/{model}") else None

    async def answer_peer(self, query: AdapterNameQuery) -> AdapterNameAnswer | None:
        """This gateway's memory for another gateway's query (silent when it has none)."""
        known = self.known_adapters.recall(query.tenant, query.name)
        return AdapterNameAnswer(known) if known is not None else None

    async def list_models(self, tenant: str) -> list[dict[str, Any]]:
        """OpenAI model cards: the base model, then the adapters ``tenant`` may use and that are
        served.  ``root`` and ``parent`` as in vLLM: a LoRA's root is the path it was loaded
        from (only for its owner: other tenants see its name, never a host path), its parent
        the base model; the base model's root is its id (not the server's model path)."""
        model_id = self.settings.model_id
        base = {
            "id": model_id,
            "object": "model",
            "created": self.started,
            "owned_by": "loraplex",
            "root": model_id,
            "parent": None,
            "max_model_len": self.settings.max_model_len,
        }
        infos = await self.adapters.list_for(tenant) if self.adapters is not None else []
        cards = [
            {
                "id": info.name,
                "object": "model",
                "created": int(info.created),
                "owned_by": info.owner if info.owner == tenant else "public",  # no tenant named
                "root": info.source if info.source and info.owner == tenant else info.name,
                "parent": model_id,
            }
            for info in infos
            if info.served
        ]
        return [base, *cards]

    def _named_model(self, model: str, lora_path: str | None) -> str:
        """What the request names: ``model``, or SGLang's ``lora_path`` beside the base model
        (or beside the same adapter); two different names are a 400."""
        if lora_path is None:
            return model
        base = self.settings.model_id
        if model not in (base, lora_path, f"{base}:{lora_path}"):
            raise InvalidParamError(
                f"model {model!r} and lora_path {lora_path!r} name different models: name the "
                f"adapter in one of them (model {base!r} with lora_path, or model alone)",
                "lora_path",
            )
        return lora_path

    async def request_adapter(self, req: GenerateRequest, tenant: str) -> str | None:
        """The adapter id a generate request runs with: the one it names, or the merge of
        LoRAX's ``merged_adapters`` (never both)."""
        named = self._named_model(req.model, req.lora_path)
        if req.merged_adapters is None:
            return await self.resolve_adapter(tenant, named)
        if named != self.settings.model_id:
            raise InvalidParamError(
                "name at most one of an adapter (model, lora_path or adapter_id) and "
                "merged_adapters",
                "merged_adapters",
            )
        return await merged_adapter_id(
            req.merged_adapters, tenant, self.resolve_adapter, "merged_adapters"
        )

    async def prepare_completion(self, req: CompletionRequest, tenant: str) -> list[Prepared]:
        """One ``Prepared`` per prompt (several for a batch ``prompt``)."""
        req.check_supported()
        adapter = await self.request_adapter(req, tenant)
        prompts = await self.builder.completions(req, tenant, adapter)
        check_answer_size(prompts, req.n, req.stream, self._max_answer_bytes)
        return prompts

    async def prepare_chat(self, req: ChatCompletionRequest, tenant: str) -> Prepared:
        req.check_supported()
        adapter = await self.request_adapter(req, tenant)
        prepared = await self.builder.chat(req, tenant, adapter)
        check_answer_size([prepared], req.n, req.stream, self._max_answer_bytes)
        return prepared

    # ---- 2. submit -------------------------------------------------------------------------
    async def start(self, p: Prepared) -> Generation:
        queue = self.router.open(p.request_id, p.tenant)
        msg = SubmitRequest(
            request_id=p.request_id,
            tenant=p.tenant,
            gateway_id=self.settings.gateway_id,
            prompt_token_ids=p.prompt_ids,
            sampling=p.sampling,
            adapter=p.adapter,
            arrival_ts=time.time(),
            # hashed here, not in the one scheduler
            prefix_keys=prefix_keys(p.adapter, p.prompt_ids, salt=p.cache_salt),
            cache_salt=p.cache_salt,
        )
        await self.resubmitter.ensure_subscribed()
        self.resubmitter.track(msg)
        try:
            reply = await self._submit(msg)
        except BaseException:
            self.resubmitter.forget(p.request_id)
            self.router.close(p.request_id)
            raise
        if not reply.accepted:
            self.resubmitter.forget(p.request_id)
            self.router.close(p.request_id)
            raise SchedulerRejectedError(
                reply.code, reply.message or f"the scheduler refused the request ({reply.code})"
            )
        self.metrics.started(p.tenant, p.adapter, len(p.prompt_ids))
        gen = Generation(
            request_id=p.request_id,
            tenant=p.tenant,
            prompt_ids=p.prompt_ids,
            queue=queue,
            tokenizer=self.tokenizer,
            timeout_s=self.settings.request_timeout_s,
            metrics=self.metrics,
            on_close=lambda g: self._closed(g, p.adapter),
            arrival=p.arrival,
            echo=p.echo,
        )
        self.resubmitter.attach(
            p.request_id, lambda: gen.completion_tokens, reply.epoch, lambda: gen.received_token_ids
        )
        return gen

    async def start_choices(
        self, prompts: list[Prepared], n: int, wanted: Callable[[], bool] = lambda: True
    ) -> list[Generation]:
        """``n`` generations per prompt, each its own scheduler request (so the scheduler's
        fairness sees every one), in the order of their OpenAI ``index``: prompt i's choice j
        is ``i * n + j``, as in vLLM.  If one is refused, those already started are cancelled.
        ``wanted()`` is asked before each SUBMIT: False (the client left) stops there with
        ``ClientDisconnectedError``, and nothing more is queued."""
        gens: list[Generation] = []
        try:
            for p in prompts:
                for i in range(n):
                    if not wanted():
                        raise ClientDisconnectedError(
                            "the client left before its request was queued"
                        )
                    gens.append(await self.start(p.choice(i)))
        except BaseException:
            for g in gens:
                await g.aclose()
            raise
        return gens

    async def _submit(self, msg: SubmitRequest) -> SubmitReply:
        timeout = self.settings.submit_timeout_s
        try:
            return await self.resubmitter.submit(msg)
        except NoRespondersError:
            raise SchedulerUnavailableError(
                "no scheduler is running: the request cannot be queued, try again later"
            ) from None
        except BusTimeoutError:
            await self.cancel(msg.request_id, "submit timed out")  # it may have been queued
            raise SchedulerUnavailableError(
                f"the scheduler did not answer within {timeout:g}s, try again later"
            ) from None
        except BusError as e:
            raise SchedulerUnavailableError(f"the message bus is unavailable ({e})") from e
        except ProtocolError as e:
            raise SchedulerUnavailableError(f"unreadable answer from the scheduler: {e}") from e

    # ---- 4. close / cancel -----------------------------------------------------------------
    async def cancel(self, request_id: str, reason: str) -> None:
        try:
            await self.bus.publish(Subjects.CANCEL, CancelRequest(request_id, reason))
        except Exception as e:  # the scheduler also times requests out; never fail the caller
            log.warning("could not publish cancel for %s: %s", request_id, e)

    async def _closed(self, gen: Generation, adapter: str | None = None) -> None:
        self.resubmitter.forget(gen.request_id)
        self.router.close(gen.request_id, cancelled=not gen.upstream_done)
        done_s = gen.duration_s if gen.finish_reason is not None else None
        self.metrics.closed(gen.tenant, adapter, gen.outcome, gen.completion_tokens, done_s)
        if not gen.upstream_done:
            await self.cancel(gen.request_id, gen.cancel_reason)
