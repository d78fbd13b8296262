"""LoRAX's (and text-generation-inference's) native API: ``POST /generate`` and
``/generate_stream``, for ``lorax-client``, ``huggingface_hub``'s ``text_generation`` and scripts
written against LoRAX.

A body ``{"inputs": ..., "parameters": {"adapter_id": ..., "max_new_tokens": ...}}`` becomes a
completion request (``to_completion``) and goes through everything an OpenAI completion does
(tenants, fairness, checks).  ``adapter_id`` names an adapter registered with this server (there is
no download: ``adapter_source`` may only be omitted, ``hub`` or ``local``).  TGI samples only
with ``do_sample`` (or a temperature, top-p, top-k or typical-p); otherwise it is greedy.
LoRAX's ``merged_adapters`` merges several adapters for the request (``merged_adapters.py``).
``best_of`` > 1 samples that many answers and returns the one with the highest mean token logprob,
the others in ``details.best_of_sequences`` (TGI's rule; as TGI, it needs sampling, no ``seed``
and no stream).  Refused with a 400 rather than ignored: ``watermark``, and
``decoder_input_details`` in a stream (as TGI; otherwise ``details.prefill`` scores the
prompt).  LoRAX's ``ignore_eos_token`` and ``return_k_alternatives`` (each token's
``alternative_tokens``) are honoured; ``api_token`` is ignored (nothing is downloaded).  Constraints: TGI's ``grammar`` (``{"type": "json"
| "regex", "value": ...}``) and LoRAX's ``response_format`` (``{"type": "json_object", "schema":
...}``). Answers carry ``details`` (finish reason as TGI names it, token ids, texts and logprobs); a
stream sends one event per token and ends with ``generated_text`` and ``details``, without
``[DONE]``.  Plain Python over pydantic bodies.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.generation import TextDelta, TokenInfo
from loraplex.gateway.merged_adapters import MergedAdapters
from loraplex.gateway.schemas import CompletionRequest, Float, Seed, validated

DEFAULT_MAX_NEW_TOKENS = 20  # LoRAX's
MAX_BEST_OF = 16  # as the OpenAI routes' n
SOURCES = (None, "hub", "local")
# Completion fields -> the TGI names a client sent, for the ``param`` of errors.
PARAM_NAMES = {
    "prompt": "inputs",
    "model": "parameters.adapter_id",
    "merged_adapters": "parameters.merged_adapters",
} | {
    k: f"parameters.{v}"
    for k, v in {
        "max_tokens": "max_new_tokens", "truncate_prompt_tokens": "truncate",
        "guided_json": "grammar", "guided_regex": "grammar", "response_format": "response_format",
        "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
        "typical_p": "typical_p",
        "repetition_penalty": "repetition_penalty", "frequency_penalty": "frequency_penalty",
        "stop": "stop",
    }.items()
}  # fmt: skip


class TGIParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    adapter_id: str | None = None
    adapter_source: str | None = None
    merged_adapters: MergedAdapters | None = None  # LoRAX (never beside adapter_id: service.py)
    api_token: str | None = None  # LoRAX: for downloads, which this server does not do
    ignore_eos_token: bool = False  # LoRAX
    return_k_alternatives: Annotated[int, Field(ge=0, le=20)] | None = None  # LoRAX
    top_n_tokens: Annotated[int, Field(ge=0, le=20)] | None = None  # TGI's: refused when > 0
    max_new_tokens: Annotated[int, Field(ge=1, le=2**31)] | None = None
    do_sample: bool = False
    temperature: Float | None = None
    top_p: Float | None = None
    top_k: Annotated[int, Field(ge=-1, le=2**31)] | None = None
    repetition_penalty: Float | None = None
    frequency_penalty: Float | None = None
    seed: Seed | None = None
    stop: list[str] = Field(default_factory=list)
    truncate: Annotated[int, Field(ge=1, le=2**31)] | None = None
    return_full_text: bool = False
    details: bool = False
    decoder_input_details: bool = False
    best_of: Annotated[int, Field(ge=1, le=MAX_BEST_OF)] | None = None
    typical_p: Float | None = None
    watermark: bool = False
    grammar: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class TGIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str = Field(min_length=1)
    parameters: TGIParameters = Field(default_factory=TGIParameters)
    stream: bool = False


def _refuse_unsupported(p: TGIParameters) -> None:
    if p.adapter_source not in SOURCES:
        raise InvalidParamError(
            f"adapter_source {p.adapter_source!r} is not supported: adapters are registered with "
            "this server (POST /v1/adapters) and named by adapter_id",
            "parameters.adapter_source",
        )
    if p.watermark:
        raise InvalidParamError("watermark is not supported", "parameters.watermark")
    if p.top_n_tokens:
        raise InvalidParamError(
            "top_n_tokens is not supported: return_k_alternatives (LoRAX's) gives each "
            "token's alternatives in details.tokens",
            "parameters.top_n_tokens",
        )


def _check_best_of(p: TGIParameters, samples: bool, stream: bool) -> int:
    """How many answers to sample (TGI's rules for ``best_of`` > 1)."""
    best_of = p.best_of or 1
    if best_of > 1:
        why = (
            "is not supported when stream == True" if stream
            else "needs sampling (do_sample or a sampling parameter)" if not samples
            else "excludes seed (each answer is sampled apart)" if p.seed is not None
            else None
        )  # fmt: skip
        if why is not None:
            raise InvalidParamError(f"best_of > 1 {why}", "parameters.best_of")
    return best_of


def _constraint(p: TGIParameters) -> dict[str, Any]:
    if p.grammar is not None:
        kind, value = p.grammar.get("type"), p.grammar.get("value")
        if kind == "json" and isinstance(value, (dict, str)):
            return {"guided_json": value}
        if kind == "regex" and isinstance(value, str):
            return {"guided_regex": value}
        raise InvalidParamError(
            'grammar must be {"type": "json", "value": schema} or {"type": "regex", "value": ...}',
            "parameters.grammar",
        )
    if p.response_format is not None:
        schema = p.response_format.get("schema")
        if p.response_format.get("type") != "json_object" or not isinstance(schema, dict | None):
            raise InvalidParamError(
                'response_format must be {"type": "json_object", "schema": {...}}',
                "parameters.response_format",
            )
        if schema is None:
            return {"response_format": {"type": "json_object"}}
        return {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    return {}


def to_completion(req: TGIRequest, base_model: str, stream: bool = False) -> CompletionRequest:
    """The completion request a TGI body means (per-token logprobs always: ``details``; the
    prompt's too with ``decoder_input_details``, which TGI refuses in a stream)."""
    p = req.parameters
    _refuse_unsupported(p)
    if p.decoder_input_details and stream:
        raise InvalidParamError(
            "decoder_input_details is not supported when streaming tokens (as in TGI)",
            "parameters.decoder_input_details",
        )
    samples = p.do_sample or any(
        v is not None for v in (p.temperature, p.top_p, p.top_k, p.typical_p)
    )
    best_of = _check_best_of(p, samples, stream)
    fields: dict[str, Any] = {
        "model": p.adapter_id or base_model,
        "prompt": req.inputs,
        "max_tokens": p.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        "temperature": (1.0 if p.temperature is None else p.temperature) if samples else 0.0,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "typical_p": p.typical_p,
        "seed": p.seed,
        "stop": p.stop or None,
        "repetition_penalty": p.repetition_penalty,
        "frequency_penalty": p.frequency_penalty,
        "truncate_prompt_tokens": p.truncate,
        "ignore_eos": p.ignore_eos_token,
        "logprobs": p.return_k_alternatives or 0,
        "prompt_logprobs": 0 if p.decoder_input_details else None,
        "merged_adapters": p.merged_adapters,
        "n": best_of,
        **_constraint(p),
    }
    return validated(CompletionRequest, fields)


def mean_logprob(infos: list[TokenInfo] | None) -> float:
    """What ``best_of`` ranks answers by (TGI's): their tokens' mean logprob."""
    if not infos:
        return float("-inf")
    return sum(i.logprob for i in infos if i.logprob is not None) / len(infos)


def finish_reason(reason: str | None, last_token: int | None, eos_ids: frozenset[int]) -> str:
    """TGI's names: ``length``, ``eos_token`` or ``stop_sequence``."""
    if reason == "length":
        return "length"
    return "eos_token" if last_token in eos_ids else "stop_sequence"


def tokens(
    ids: tuple[int, ...] | list[int],
    text: str,
    infos: list[TokenInfo] | None,
    special: frozenset[int],
) -> list[dict[str, Any]]:
    """One TGI token per id; the ids' text goes on the last (a delta's text can lag its
    tokens, so it is not split between them)."""
    out = []
    for i, token_id in enumerate(ids):
        info = infos[i] if infos is not None and i < len(infos) else None
        out.append(
            {
                "id": token_id,
                "text": text if i == len(ids) - 1 else "",
                "logprob": info.logprob if info is not None else None,
                "special": token_id in special,
            }
        )
        if info is not None and info.top:  # LoRAX's return_k_alternatives
            out[-1]["alternative_tokens"] = [
                {"id": t, "text": text, "logprob": lp}
                for (text, lp), t in zip(info.top, info.top_ids, strict=False)
            ]
    return out


def prefill_tokens(infos: list[TokenInfo]) -> list[dict[str, Any]]:
    """TGI's ``details.prefill``: each prompt token with its logprob (the first has none)."""
    return [{"id": i.token_id, "text": i.token, "logprob": i.logprob} for i in infos]


def stream_events(delta: TextDelta, index: int, special: frozenset[int]) -> list[dict[str, Any]]:
    """The events of one delta: one per token (a final delta with no token gets one, id -1)."""
    toks = tokens(delta.token_ids, delta.text, delta.logprobs, special) or [
        {"id": -1, "text": delta.text, "logprob": None, "special": False}
    ]
    return [
        {"index": index + i, "token": t, "generated_text": None, "details": None}
        for i, t in enumerate(toks)
    ]
