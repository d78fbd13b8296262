"""LoRAX's ``merged_adapters`` (``parameters.merged_adapters`` on ``/generate``, and the same field
on the OpenAI routes as an extension): several of the tenant's adapters, merged per request.

The gateway checks the body, resolves each name for the tenant (its own adapter of that name,
else the public one: the scoping of ``model``), and names the merge with the id the workers build
it from (``lora.merge_spec``).  LoRAX's rules: ``ids`` not empty, one weight per id (omitted:
each 1.0), ``merge_strategy`` linear (default), ties, dare_linear or dare_ties, ``density`` in
[0, 1] (default 1.0: keep everything), ``majority_sign_method`` total (default) or frequency;
never beside an adapter named by ``model``/``adapter_id``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from loraplex.errors import AdapterError
from loraplex.gateway.errors import InvalidParamError, ModelNotFoundError
from loraplex.lora.merge_spec import MAX_MERGED_ADAPTERS, MergeSpec

Float = Annotated[float, Field(allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=256)]


class MergedAdapters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: Annotated[list[Name], Field(min_length=1, max_length=MAX_MERGED_ADAPTERS)]
    weights: Annotated[list[Float], Field(max_length=MAX_MERGED_ADAPTERS)] | None = None
    merge_strategy: str | None = None
    density: Float = 1.0
    majority_sign_method: str | None = None


async def merged_adapter_id(
    merged: MergedAdapters,
    tenant: str,
    resolve: Callable[[str, str], Awaitable[str | None]],
    param: str,
) -> str:
    """The id of the merge ``merged`` asks for; ``resolve`` (tenant, name) -> adapter id or None
    (the base model).  A 404 for a name the tenant cannot use, as for ``model``; a 400 (``param``)
    for what LoRAX refuses."""
    weights = merged.weights if merged.weights else [1.0] * len(merged.ids)
    if len(weights) != len(merged.ids):
        raise InvalidParamError("ids and weights must have the same length", param)
    aids = []
    for name in merged.ids:
        try:
            aid = await resolve(tenant, name)
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f"The adapter {name!r} of merged_adapters does not exist or you do not have "
                "access to it."
            ) from None
        if aid is None:
            raise InvalidParamError("merged_adapters.ids name adapters, not the base model", param)
        aids.append(aid)
    try:
        spec = MergeSpec(
            adapters=tuple(aids),
            weights=tuple(float(w) for w in weights),
            strategy=merged.merge_strategy or "linear",
            density=merged.density,
            majority_sign_method=merged.majority_sign_method or "total",
        )
    except AdapterError as e:
        raise InvalidParamError(str(e), param) from None
    return spec.adapter_id(tenant)
