"""``Preparation``: what a request needs before it joins the engine, done beside the engine loop
(its adapter paged in, its output constraint compiled) and then, on the loop, attached."""

from __future__ import annotations

from loraplex.adapters.errors import StoreUnavailableError
from loraplex.engine.llm_engine import LLMEngine
from loraplex.errors import AdapterNotFoundError, LoraplexError
from loraplex.worker.active import Active
from loraplex.worker.adapter_pager import AdapterPager, Resolved
from loraplex.worker.grammar_compiles import CompileBusy, GrammarCompiles
from loraplex.worker.publish import Publisher


class Preparation:
    """Pages a request's adapter in through the pager and compiles its grammar into the engine's
    cache; reports what fails through the publisher.  Shared by assignments and K/V hand-overs."""

    def __init__(self, pager: AdapterPager, engine: LLMEngine, publisher: Publisher) -> None:
        self._pager = pager
        self._engine = engine
        self._publisher = publisher
        self._compiles: GrammarCompiles | None = None  # made by the first constrained request

    @property
    def compiles(self) -> GrammarCompiles:
        if self._compiles is None:
            grammars = self._engine.grammars
            self._compiles = GrammarCompiles(grammars.compile, setup_fn=grammars.load_compiler)
        return self._compiles

    async def resolve_adapter(self, req: Active) -> Resolved | None | bool:
        """Page in the request's adapter beside the engine loop.

        Returns the resolution, None for a base-model request, or False after reporting an error.
        An adapter store that cannot be reached is no fault of the request: a 503, at once (placed
        again, it would hold a slot through the store's retries once more, on each attempt: in
        the chaos soak that queued other requests for over a minute).
        """
        name = req.submit.adapter
        if name is None:
            return None
        try:
            return await self._pager.prepare(name)
        except StoreUnavailableError as e:
            await self._publisher.fail(req, 503, str(e), retryable=False)
        except AdapterNotFoundError as e:
            await self._publisher.fail(req, 404, str(e), retryable=False)
        except LoraplexError as e:
            await self._publisher.fail(req, 400, str(e), retryable=False)
        return False

    async def compile_grammar(self, req: Active, report: bool = True) -> str | None:
        """Compile the request's output constraint in a thread, beside the engine loop (the first
        one also loads the tokenizer into xgrammar), so the engine only finds it in the cache;
        bounded in time (``grammar_compiles.py``).  None when it is ready, else why not (after
        reporting it when ``report``: a 400, or a retryable 503 when the worker was too busy)."""
        so = req.submit.sampling.structured_outputs  # as the gateway parsed it (no reparse)
        if so is None:
            return None
        try:
            await self.compiles.compile(so)
        except CompileBusy as e:
            if report:
                await self._publisher.fail(req, 503, str(e), retryable=True)
            return str(e)
        except LoraplexError as e:
            if report:
                await self._publisher.fail(req, 400, str(e), retryable=False)
            return str(e)
        return None

    def attach_adapter(self, req: Active, r: Resolved | None) -> None:
        """Engine loop: make the adapter resident and pin it for this request."""
        if r is not None:
            self._pager.install(r)
            self._pager.pin(r.key)
            req.adapter_key = r.key
