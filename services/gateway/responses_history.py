"""What the Responses routes ask of the response store (``response_store.py``): the conversation a
``previous_response_id`` continues, keeping an answer, reading, listing and deleting one.

A response is kept after it is generated, before the client hears it is done (the last stream
event, or the JSON answer), so the next request may name it at once.  When it cannot be kept
(the store is down, or it is over the size limit) the answer still comes, with ``store: false``:
a generated answer is never lost to the store.  Plain Python.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from loraplex.gateway.errors import InvalidParamError, shown_id
from loraplex.gateway.response_store import (
    ResponseNotFoundError,
    ResponseStore,
    ResponseStoreUnavailableError,
    StoredResponse,
    well_formed,
)
from loraplex.gateway.responses_api import ResponsesRequest

log = logging.getLogger(__name__)

MAX_PAGE = 100  # input_items' limit, as OpenAI's


class ResponseHistory:
    def __init__(
        self, store: ResponseStore | None, record: Callable[[str], None] = lambda outcome: None
    ) -> None:
        self.store = store  # None: responses are never kept (--responses-ttl 0)
        self.record = record  # each keep's outcome: kept, too_large, store_unavailable

    def keeps(self, req: ResponsesRequest) -> bool:
        """Whether ``req``'s answer is to be kept (``store`` defaults to true, as OpenAI's)."""
        return self.store is not None and req.store is not False

    async def previous(self, tenant: str, req: ResponsesRequest) -> list[dict[str, Any]]:
        """The items ``req.previous_response_id`` continues: its conversation, then its output;
        [] without one."""
        if req.previous_response_id is None:
            return []
        if self.store is None:
            raise InvalidParamError(
                "previous_response_id needs a response store, and this server keeps no responses "
                "(--responses-ttl 0): send the whole conversation in input",
                "previous_response_id",
            )
        record = await self.find(tenant, req.previous_response_id)
        if record is None:
            raise ResponseNotFoundError(
                f"Previous response with id {shown_id(req.previous_response_id)} not found.",
                "previous_response_id",
                "previous_response_not_found",
            )
        if record.response.get("status") in ("queued", "in_progress"):  # a background one
            raise InvalidParamError(
                f"previous response {req.previous_response_id!r} is still in progress: wait "
                "for it (GET /v1/responses/{id}) before continuing it",
                "previous_response_id",
            )
        return [*record.items, *record.response.get("output", [])]

    async def keep(
        self, tenant: str, response: dict[str, Any], items: list[dict[str, Any]]
    ) -> bool:
        """Keep ``response`` (and its conversation ``items``); whether it was kept.  Never
        raises for the store: the answer is worth more than its copy."""
        assert self.store is not None
        try:
            kept = await self.store.put(tenant, StoredResponse(response, items))
        except ResponseStoreUnavailableError as e:
            log.warning("response %s not kept: %s", response["id"], e)
            self.record("store_unavailable")
            return False
        if not kept:
            log.info("response %s not kept: over the store's size limit", response["id"])
        self.record("kept" if kept else "too_large")
        return kept

    async def put(self, tenant: str, record: StoredResponse) -> None:
        """Keep ``record`` or raise: a background response must be findable
        (``ResponseStoreUnavailableError``: 503; over the size limit: 400)."""
        assert self.store is not None
        if not await self.store.put(tenant, record):
            raise InvalidParamError(
                "background: the conversation is over the response store's size limit "
                "(--responses-max-kb); send it without background",
                "background",
            )

    async def get(self, tenant: str, response_id: str) -> StoredResponse:
        record = await self.find(tenant, response_id)
        if record is None:
            raise ResponseNotFoundError(f"Response with id {shown_id(response_id)} not found.")
        return record

    async def delete(self, tenant: str, response_id: str) -> None:
        if self.store is None or not well_formed(response_id):
            deleted = False
        else:
            deleted = await self.store.delete(tenant, response_id)
        if not deleted:
            raise ResponseNotFoundError(f"Response with id {shown_id(response_id)} not found.")

    async def find(self, tenant: str, response_id: str) -> StoredResponse | None:
        """The kept record, or None (never kept, gone, another tenant's): no 404."""
        if self.store is None or not well_formed(response_id):
            return None
        return await self.store.get(tenant, response_id)


def page(items: list[dict[str, Any]], limit: int, order: str, after: str | None) -> dict[str, Any]:
    """One page of a stored response's input items, as OpenAI lists them: ``order`` desc
    (newest first, the default) or asc, ``limit`` items from the one after ``after``."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidParamError(f"limit must be between 1 and {MAX_PAGE}", "limit")
    if order not in ("asc", "desc"):
        raise InvalidParamError("order must be 'asc' or 'desc'", "order")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise InvalidParamError(f"no input item with id {after!r}", "after")
        start = ids.index(after) + 1
    data = ordered[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].get("id") if data else None,
        "last_id": data[-1].get("id") if data else None,
        "has_more": start + limit < len(ordered),
    }
