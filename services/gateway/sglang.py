"""SGLang's native ``POST /generate``, for scripts written against an SGLang server.

A body ``{"text" | "input_ids": ..., "sampling_params": {...}, "lora_path": ..., "stream": ...}``
(one prompt or a batch) becomes a completion request (``to_completion``) and goes through
everything an OpenAI completion does.  ``lora_path`` names an adapter registered with this
server (SGLang's ``--lora-paths NAME=PATH`` names them the same way; ``loraplex up
--lora-modules`` registers them at start).  Sampling: ``max_new_tokens`` (default 128, as
SGLang), ``temperature`` (default 1.0), ``top_p``, ``top_k``, ``min_p``, the three penalties,
``stop``, ``stop_token_ids``, ``ignore_eos``, ``skip_special_tokens``, ``min_new_tokens``,
``no_stop_trim``, ``n`` and the constraints ``json_schema``, ``regex`` and ``ebnf``.  Refused
with a 400 rather than ignored: ``input_embeds``, ``image_data``, input logprobs
(``logprob_start_len`` other than -1) and different adapters per prompt of one batch.
``return_logprob`` gives ``meta_info.output_token_logprobs`` (``[logprob, token id, text or
null]`` per token) and, with ``top_logprobs_num``, ``output_top_logprobs``.
Answers are ``{"text", "meta_info": {"id", "finish_reason", "prompt_tokens",
"completion_tokens", "cached_tokens"}}`` (a list for a batch); a stream sends the text so far in
each event, as SGLang does, then ``data: [DONE]``.  Plain Python over pydantic bodies.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.generation import TokenInfo
from loraplex.gateway.schemas import CompletionRequest, Float, Seed, TokenId, validated

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's
# Completion fields -> the SGLang names a client sent, for the ``param`` of errors.
PARAM_NAMES = {"prompt": "text", "model": "lora_path"} | {
    k: f"sampling_params.{v}"
    for k, v in {
        "max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens",
        "guided_json": "json_schema", "guided_regex": "regex", "guided_grammar": "ebnf",
        "seed": "sampling_seed", "include_stop_str_in_output": "no_stop_trim",
        **{name: name for name in (
            "temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty",
            "repetition_penalty", "stop", "stop_token_ids", "n",
        )},
    }.items()
}  # fmt: skip


class SGLangSampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    max_new_tokens: Annotated[int, Field(ge=1, le=2**31)] | None = None
    min_new_tokens: Annotated[int, Field(ge=0, le=2**31)] | None = None
    temperature: Float | None = None
    top_p: Float | None = None
    top_k: Annotated[int, Field(ge=-1, le=2**31)] | None = None
    min_p: Float | None = None
    frequency_penalty: Float | None = None
    presence_penalty: Float | None = None
    repetition_penalty: Float | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    n: Annotated[int, Field(ge=1, le=16)] = 1
    sampling_seed: Seed | None = None
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None


class SGLangRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str | list[str] | None = None
    input_ids: list[TokenId] | list[list[TokenId]] | None = None
    sampling_params: SGLangSampling = Field(default_factory=SGLangSampling)
    lora_path: str | list[str | None] | None = None
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: Annotated[int, Field(ge=0, le=20)] = 0
    return_text_in_logprobs: bool = False
    input_embeds: Any = None
    image_data: Any = None

    @property
    def is_batch(self) -> bool:
        return isinstance(self.text, list) or (
            bool(self.input_ids) and isinstance(self.input_ids[0], list)  # type: ignore[index]
        )


def is_sglang(body: dict[str, Any]) -> bool:
    """An SGLang body (``text`` or ``input_ids``), not a TGI/LoRAX one (``inputs``)."""
    return "inputs" not in body and ("text" in body or "input_ids" in body)


def _adapter(lora: str | list[str | None] | None) -> str | None:
    if not isinstance(lora, list):
        return lora
    if len(set(lora)) > 1:
        raise InvalidParamError(
            "one lora_path per batch: send prompts for different adapters as separate requests",
            "lora_path",
        )
    return lora[0] if lora else None


def to_completion(req: SGLangRequest, base_model: str) -> CompletionRequest:
    for name in ("input_embeds", "image_data"):
        if getattr(req, name):
            raise InvalidParamError(f"{name} is not supported", name)
    if req.return_logprob and req.logprob_start_len != -1:
        raise InvalidParamError(
            "only the output's logprobs are served: logprob_start_len must be -1",
            "logprob_start_len",
        )
    if (req.text is None) == (req.input_ids is None):
        raise InvalidParamError("send either text or input_ids", "text")
    s = req.sampling_params
    constraints = {"guided_json": s.json_schema, "guided_regex": s.regex, "guided_grammar": s.ebnf}
    fields: dict[str, Any] = {
        "model": _adapter(req.lora_path) or base_model,
        "prompt": req.text if req.text is not None else req.input_ids,
        "max_tokens": s.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        "min_tokens": s.min_new_tokens,
        "temperature": 1.0 if s.temperature is None else s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "frequency_penalty": s.frequency_penalty,
        "presence_penalty": s.presence_penalty,
        "repetition_penalty": s.repetition_penalty,
        "stop": s.stop,
        "stop_token_ids": s.stop_token_ids,
        "ignore_eos": s.ignore_eos,
        "skip_special_tokens": s.skip_special_tokens,
        "include_stop_str_in_output": s.no_stop_trim,
        "n": s.n,
        "seed": s.sampling_seed,
        "logprobs": req.top_logprobs_num if req.return_logprob else None,
        **{k: v for k, v in constraints.items() if v is not None},
    }
    return validated(CompletionRequest, fields)


def finish_reason(
    reason: str | None, tokens: int, last_token: int | None, eos_ids: frozenset[int]
) -> dict[str, Any] | None:
    """SGLang's ``meta_info.finish_reason``: ``{"type": "length", "length": n}`` or ``{"type":
    "stop", "matched": the EOS id, or null for a stop string}``."""
    if reason is None:
        return None
    if reason == "length":
        return {"type": "length", "length": tokens}
    return {"type": "stop", "matched": last_token if last_token in eos_ids else None}


def logprob_fields(
    infos: list[TokenInfo] | None, top: int, with_text: bool
) -> dict[str, list[Any]]:
    """``meta_info``'s logprobs: ``[logprob, token id, text or None]`` per token (SGLang)."""

    def entry(logprob: float | None, token_id: int | None, text: str) -> list[Any]:
        return [logprob, token_id, text if with_text else None]

    infos = infos or []
    out: dict[str, list[Any]] = {
        "input_token_logprobs": [],
        "output_token_logprobs": [entry(i.logprob, i.token_id, i.token) for i in infos],
    }
    if top:
        out["output_top_logprobs"] = [
            [entry(lp, t, text) for (text, lp), t in zip(i.top or [], i.top_ids, strict=False)]
            for i in infos
        ]
    return out
