"""From a validated OpenAI body to ``SamplingParams``: sampling fields, ``logit_bias`` and
``allowed_token_ids`` ids, ``bad_words`` (tokenized by ``bad_words.py``), the output constraint (the request's own or its tool choice's) and ``truncate_prompt_tokens``.
Every failure is an ``InvalidParamError`` whose ``param`` names the field."""

from __future__ import annotations

from loraplex.errors import InvalidRequestError
from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.schemas import GenerateRequest
from loraplex.gateway.structured import Constraint, structured_outputs
from loraplex.gateway.tools import ToolUse
from loraplex.sampling_params import SamplingParams
from loraplex.structured_outputs import StructuredOutputsParams

_SAMPLING_PARAMS = (
    "max_tokens",
    "min_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "logprobs",
    "prompt_logprobs",
    "allowed_token_ids",
    "bad_words",
)


def truncated(ids: list[int], keep: int | None) -> list[int]:
    """vLLM's ``truncate_prompt_tokens``: the prompt's last ``keep`` tokens."""
    return ids if keep is None else ids[-keep:]


def _logit_bias(raw: dict[str, float] | None, vocab: int) -> dict[int, float] | None:
    """OpenAI's ``logit_bias`` (token id as a decimal string -> bias) with ids in the vocabulary;
    the bias range and the entry count are SamplingParams' checks."""
    if not raw:
        return None
    out: dict[int, float] = {}
    for key, bias in raw.items():
        token = int(key) if key.isascii() and key.isdigit() and len(key) <= 10 else -1
        if not 0 <= token < vocab:
            raise InvalidParamError(
                f"logit_bias key {key!r} is not a token id in the vocabulary (0 to {vocab - 1})",
                "logit_bias",
            )
        out[token] = bias
    return out


def _allowed(ids: list[int] | None, vocab: int) -> tuple[int, ...] | None:
    """vLLM's ``allowed_token_ids``: ids in the vocabulary; the count is SamplingParams' check."""
    if ids is None:
        return None
    bad = next((t for t in ids if t >= vocab), None)
    if bad is not None:
        raise InvalidParamError(
            f"allowed_token_ids: {bad} is not a token id in the vocabulary (0 to {vocab - 1})",
            "allowed_token_ids",
        )
    return tuple(dict.fromkeys(ids))


def request_constraint(req: GenerateRequest, tools: ToolUse | None) -> Constraint | None:
    """The output constraint: the request's own, or the one its tool choice sets (not both)."""
    stated = structured_outputs(req)
    forced_params = tools.constraint() if tools is not None else None
    forced = None
    if forced_params is not None:
        forced = Constraint(forced_params, "tools", "a tool's parameters schema")
    if stated is not None and forced is not None:
        raise InvalidParamError(
            f'tool_choice "{tools.choice}" constrains the output itself; it cannot be combined '  # type: ignore[union-attr]
            "with response_format, structured_outputs or guided_*",
            "tool_choice",
        )
    return forced or stated


def sampling_params(
    req: GenerateRequest,
    max_tokens: int,
    extra_stop_ids: tuple[int, ...],
    vocab: int,
    constraint: StructuredOutputsParams | None,
    bad_words: tuple[tuple[int, ...], ...] = (),
) -> SamplingParams:
    top_k = -1 if req.top_k in (None, 0) else req.top_k
    stop_ids = tuple(dict.fromkeys([*(req.stop_token_ids or []), *extra_stop_ids]))
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=top_k,
            min_p=req.min_p or 0.0,
            typical_p=1.0 if req.typical_p is None else req.typical_p,
            seed=req.seed,
            stop=tuple(req.stop_list()),
            stop_token_ids=stop_ids,
            ignore_eos=req.ignore_eos,
            min_tokens=req.min_tokens or 0,
            include_stop_str_in_output=req.include_stop_str_in_output,
            skip_special_tokens=req.skip_special_tokens,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            logit_bias=_logit_bias(req.logit_bias, vocab),
            logprobs=req.logprobs_count(),
            prompt_logprobs=req.prompt_logprobs_count(),
            structured_outputs=constraint,
            allowed_token_ids=_allowed(req.allowed_token_ids, vocab),
            bad_words_token_ids=bad_words,
        )
    except InvalidRequestError as e:
        first = str(e).split(" ", 1)[0].rstrip(":")
        raise InvalidParamError(str(e), first if first in _SAMPLING_PARAMS else None) from e
