"""SGLang's native ``POST /generate``, for scripts written against an SGLang server.

A body ``{"text" | "input_ids": ..., "sampling_params": {...}, "lora_path": ..., "stream": ...}``
(one prompt or a batch) becomes a completion request (``to_completion``) and goes through
everything an OpenAI completion does.  ``lora_path`` names an adapter registered with this
server (SGLang's ``--lora-paths NAME=PATH`` names them the same way; ``loraplex up
--lora-modules`` registers them at start).  Sampling: ``max_new_tokens`` (default 128, as
SGLang), ``temperature`` (default 1.0), ``top_p``, ``top_k``, ``min_p``, the three penalties,
``stop``, ``stop_token_ids``, ``ignore_eos``, ``skip_special_tokens``, ``min_new_tokens``,
``no_stop_trim``, ``n`` and the constraints ``json_schema``, ``regex`` and ``ebnf``.  A batch
may name one adapter per prompt (``lora_path`` a list as long as the batch, ``null`` for the base
model): each prompt is then its own completion request, and the scheduler batches them together
as it batches any requests.  Refused with a 400 rather than ignored: ``input_embeds``,
``image_data`` and ``custom_logit_processor`` (code from a request is never run).
``return_logprob`` gives ``meta_info.output_token_logprobs`` (``[logprob, token id, text or
null]`` per token) and ``input_token_logprobs``, the prompt's tokens from ``logprob_start_len``
on (-1, the default: its last token only), the first of them with a null logprob as SGLang
gives it; with ``top_logprobs_num``, ``output_top_logprobs`` and ``input_top_logprobs`` (null
for that first token).  A ``logprob_start_len`` at or past the prompt's end is a 400.
Answers are ``{"text", "meta_info": {"id", "finish_reason", "prompt_tokens",
"completion_tokens", "cached_tokens"}}`` (a list for a batch); a stream sends the text so far in
each event, as SGLang does, then ``data: [DONE]``.  Plain Python over pydantic bodies.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.generation import TokenInfo
from loraplex.gateway.prepare import Prepared
from loraplex.gateway.schemas import (
    MAX_TOP_LOGPROBS,
    CompletionRequest,
    Float,
    Seed,
    TokenId,
    validated,
)

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
    logprob_start_len: int = -1  # -1: the prompt's last token only
    top_logprobs_num: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] = 0
    return_text_in_logprobs: bool = False
    input_embeds: Any = None
    image_data: Any = None
    custom_logit_processor: Any = None

    @property
    def is_batch(self) -> bool:
        return isinstance(self.text, list) or (
            bool(self.input_ids) and isinstance(self.input_ids[0], list)  # type: ignore[index]
        )

    @property
    def scores_prompt(self) -> bool:
        """Input logprobs past the prompt's last token: the workers must score the prompt."""
        return self.return_logprob and self.logprob_start_len >= 0


def is_sglang(body: dict[str, Any]) -> bool:
    """An SGLang body (``text`` or ``input_ids``), not a TGI/LoRAX one (``inputs``)."""
    return "inputs" not in body and ("text" in body or "input_ids" in body)


def to_completions(req: SGLangRequest, base_model: str) -> list[CompletionRequest]:
    """The completion requests a body means: one, or one per prompt of a batch whose prompts
    name different adapters (``lora_path`` a list, one entry per prompt)."""
    lora = req.lora_path
    if not isinstance(lora, list):
        return [to_completion(req, base_model, lora)]
    prompts = (req.text if req.text is not None else req.input_ids) or []
    count = len(prompts) if req.is_batch else 1
    if len(lora) != count:
        raise InvalidParamError(
            f"lora_path as a list names one adapter per prompt: {len(lora)} for {count}",
            "lora_path",
        )
    if len(set(lora)) == 1:
        return [to_completion(req, base_model, lora[0])]
    key = "text" if req.text is not None else "input_ids"
    return [
        to_completion(req.model_copy(update={key: prompt}), base_model, adapter)
        for prompt, adapter in zip(prompts, lora, strict=True)
    ]


def to_completion(req: SGLangRequest, base_model: str, lora: str | None) -> CompletionRequest:
    for name in ("input_embeds", "image_data", "custom_logit_processor"):
        if getattr(req, name):
            raise InvalidParamError(f"{name} is not supported", name)
    if req.return_logprob and req.logprob_start_len < -1:
        raise InvalidParamError(
            "logprob_start_len must be -1 (the prompt's last token) or a prompt position >= 0",
            "logprob_start_len",
        )
    if (req.text is None) == (req.input_ids is None):
        raise InvalidParamError("send either text or input_ids", "text")
    s = req.sampling_params
    constraints = {"guided_json": s.json_schema, "guided_regex": s.regex, "guided_grammar": s.ebnf}
    fields: dict[str, Any] = {
        "model": lora or base_model,
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
        "prompt_logprobs": req.top_logprobs_num if req.scores_prompt else None,
        **{k: v for k, v in constraints.items() if v is not None},
    }
    return validated(CompletionRequest, fields)


def check_logprob_start(req: SGLangRequest, prompts: list[Prepared]) -> None:
    """SGLang's 400 for input logprobs that would start at or past a prompt's end."""
    if not req.scores_prompt:
        return
    for i, p in enumerate(prompts):
        if req.logprob_start_len >= len(p.prompt_ids):
            where = f"prompt {i} has" if req.is_batch else "the prompt has"
            raise InvalidParamError(
                f"logprob_start_len ({req.logprob_start_len}) is not below the number of input "
                f"tokens ({where} {len(p.prompt_ids)}); use a smaller logprob_start_len",
                "logprob_start_len",
            )


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
    infos: list[TokenInfo] | None, prompt: list[TokenInfo], top: int, with_text: bool
) -> dict[str, list[Any]]:
    """``meta_info``'s logprobs: ``[logprob, token id, text or None]`` per token (SGLang), for
    the completion (``infos``) and the prompt's tokens from ``logprob_start_len`` on
    (``prompt``), whose first SGLang leaves unscored (null, and null top logprobs)."""

    def entry(logprob: float | None, token_id: int | None, text: str) -> list[Any]:
        return [logprob, token_id, text if with_text else None]

    def tops(i: TokenInfo) -> list[list[Any]]:
        pairs = zip(i.top or [], i.top_ids, strict=False)
        return [entry(lp, t, text) for (text, lp), t in list(pairs)[:top]]

    infos = infos or []
    out: dict[str, list[Any]] = {
        "input_token_logprobs": [
            entry(None if n == 0 else i.logprob, i.token_id, i.token) for n, i in enumerate(prompt)
        ],
        "output_token_logprobs": [entry(i.logprob, i.token_id, i.token) for i in infos],
    }
    if top:
        out["input_top_logprobs"] = [None if n == 0 else tops(i) for n, i in enumerate(prompt)]
        out["output_top_logprobs"] = [tops(i) for i in infos]
    return out
