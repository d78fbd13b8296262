"""OpenAI request bodies (pydantic).  Unknown fields are ignored, as OpenAI clients send many.

``prompt`` is one prompt (a string or a list of token ids) or, as in vLLM, a batch: a list of
strings or a list of token-id lists, each prompt its own request (``prepare.py``).  ``n`` is at
most 16.
Beyond OpenAI, the vLLM extensions ``top_k``, ``min_p``, ``ignore_eos``, ``min_tokens``,
``repetition_penalty``, ``stop_token_ids``, ``include_stop_str_in_output``,
``skip_special_tokens``, ``truncate_prompt_tokens``, ``prompt_logprobs``, ``allowed_token_ids``,
``bad_words``, ``structured_outputs`` and ``guided_*`` are accepted (see ``structured.py``).
Types are checked here; ranges (vLLM's) in ``loraplex.sampling_params`` via ``prepare.py``.
Strings holding lone surrogates or misplaced NUL never get here (``body_check.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loraplex.gateway.chat_messages import ChatMessage
from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.merged_adapters import MergedAdapters
from loraplex.gateway.refused_fields import refuse_unserved
from loraplex.gateway.template_kwargs import checked_template_kwargs
from loraplex.gateway.tools import template_arguments

Float = Annotated[float, Field(allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64)]
# strict: JSON's true is not token 1 (pydantic's lax ints take it)
TokenId = Annotated[int, Field(ge=0, lt=2**32, strict=True)]
Prompt = str | list[TokenId] | list[str] | list[list[TokenId]]
OnePrompt = str | list[int]
MAX_TOP_LOGPROBS = 20  # alternatives per token, in every API (OpenAI's limit)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class GenerateRequest(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="allow")  # kept to refuse what is not served (refused_fields)

    model: str = Field(min_length=1)
    temperature: Float | None = None
    top_p: Float | None = None
    top_k: Annotated[int, Field(ge=-1, le=2**31)] | None = None
    min_p: Float | None = None  # vLLM extension
    typical_p: Float | None = None  # TGI/LoRAX (and transformers): locally typical sampling
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=16)] = 1  # choices, each generated as its own request
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0, le=2**31)] | None = None  # vLLM extension
    # vLLM extensions: keep the stop string that ended the answer; keep special tokens' text;
    # keep only the prompt's last k tokens
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    truncate_prompt_tokens: Annotated[int, Field(ge=1, le=2**31)] | None = None
    presence_penalty: Float | None = None
    frequency_penalty: Float | None = None
    repetition_penalty: Float | None = None  # vLLM extension
    logit_bias: dict[str, Float] | None = None  # token id (as a string) -> bias in [-100, 100]
    # SGLang extension: the adapter, named apart from ``model`` (which then names the base model)
    lora_path: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    # LoRAX extension: several adapters merged for this request (merged_adapters.py)
    merged_adapters: MergedAdapters | None = None
    # vLLM extensions: sample only these token ids; never write these words (bad_words.py)
    allowed_token_ids: list[TokenId] | None = None
    bad_words: list[str] | None = None
    user: str | None = None
    # vLLM: logprobs name tokens "token_id:<id>" (for tokens that do not decode on their own)
    return_tokens_as_token_ids: bool = False
    # vLLM: the prompt's and the answer's token ids in the answer (RL frameworks read them)
    return_token_ids: bool = False
    # vLLM: each prompt token's logprob and this many alternatives (not in a stream, as vLLM)
    prompt_logprobs: int | None = None
    # vLLM fields refused rather than ignored (check_supported)
    use_beam_search: bool = False
    priority: int = 0
    # vLLM extension: reuse cached prompt prefixes only with requests of the same salt (within
    # the tenant's own, by default: --prefix-cache-scope).  No control characters: the salt is
    # joined to the tenant's with one.
    cache_salt: (
        Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f]*$")] | None
    ) = None
    # Structured outputs: OpenAI's response_format, vLLM's structured_outputs and guided_* fields.
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def check_supported(self) -> None:
        """Refuse (400) what the gateway cannot honour instead of silently ignoring it."""
        refuse_unserved(self.model_extra)
        k = self.prompt_logprobs
        if k is not None and self.stream and k != 0:  # vLLM's check (0 is accepted, unshown)
            raise InvalidParamError(
                "prompt_logprobs are not available when stream=true", "prompt_logprobs"
            )
        if k is not None and not 0 <= k <= MAX_TOP_LOGPROBS:
            raise InvalidParamError(
                f"prompt_logprobs must be in [0, {MAX_TOP_LOGPROBS}] (vLLM's -1, the whole "
                f"vocabulary, is not served), got {k}",
                "prompt_logprobs",
            )
        if self.use_beam_search:
            raise InvalidParamError("beam search is not supported", "use_beam_search")
        if self.priority:
            raise InvalidParamError(
                "priority is not supported: requests are ordered by tenant fairness", "priority"
            )

    def logprobs_count(self) -> int | None:
        """How many alternatives to report per token; None: no logprobs."""
        return None

    def shown_prompt_logprobs(self) -> int | None:
        """vLLM's ``prompt_logprobs`` as the answer shows it: never in a stream."""
        return None if self.stream else self.prompt_logprobs

    def prompt_logprobs_count(self) -> int | None:
        """How many alternatives the workers compute per prompt token; None: no prompt
        logprobs."""
        return self.shown_prompt_logprobs()


class CompletionRequest(GenerateRequest):
    prompt: Prompt
    max_tokens: int | None = 16
    echo: bool = False
    add_special_tokens: bool = True  # vLLM: the tokenizer's BOS before a text prompt
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.best_of not in (None, 1):
            raise InvalidParamError("best_of is not supported (only 1)", "best_of")
        if self.suffix:
            raise InvalidParamError("suffix is not supported", "suffix")

    def logprobs_count(self) -> int | None:
        return self.logprobs

    def prompt_logprobs_count(self) -> int | None:
        """With ``echo``, the echoed prompt tokens get logprobs too (the first one null); one
        computation serves it and ``prompt_logprobs``, each answer taking its own count."""
        counts = (self.logprobs if self.echo else None, self.shown_prompt_logprobs())
        return max((k for k in counts if k is not None), default=None)

    @property
    def is_batch(self) -> bool:
        """``prompt`` is a list of prompts (strings or token-id lists), not one prompt."""
        p = self.prompt
        return isinstance(p, list) and bool(p) and isinstance(p[0], (str, list))

    def prompt_list(self) -> list[OnePrompt]:
        """The prompts of this request, in order.  An empty one is a 400; in a batch the error
        names its index (``prompt[3]: ...``)."""
        batch = self.is_batch
        prompts: list[OnePrompt] = list(self.prompt) if batch else [self.prompt]  # type: ignore[arg-type,list-item]
        for i, p in enumerate(prompts):
            if not p or (isinstance(p, str) and not p.strip()):
                where = f"prompt[{i}]" if batch else "prompt"
                message = "prompt must not be empty"
                raise InvalidParamError(f"{where}: {message}" if batch else message, where)
        return prompts


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], fields: dict[str, Any], param: str | None = None) -> M:
    """``model(**fields)`` for a body built from another API's (LoRAX, Responses): a field that
    does not validate is a 400 naming it (``param``: the client's name for all of them)."""
    try:
        return model(**fields)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InvalidParamError(f"{where}: {first['msg']}", param or where) from e


def check_continuation(continue_final_message: bool, add_generation_prompt: bool) -> None:
    """vLLM's rule: a continued last message takes no generation prompt after it."""
    if continue_final_message and add_generation_prompt:
        raise InvalidParamError(
            "continue_final_message and add_generation_prompt cannot both be true: set "
            "add_generation_prompt to false to continue the last message",
            "continue_final_message",
        )


class ChatCompletionRequest(GenerateRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_special_tokens: bool = False  # vLLM: the template holds them; true adds the tokenizer's too
    # Tool calling (tools.py checks them): function tools, "none" / "auto" / "required" / named.
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # vLLM extension: more variables for the chat template (``enable_thinking``: Qwen3)
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True  # vLLM
    chat_template: str | None = None  # vLLM: refused (a tenant's template is not run here)
    # vLLM: the last (assistant) message is continued, not answered (add_generation_prompt false)
    continue_final_message: bool = False

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidParamError("top_logprobs needs logprobs=true", "top_logprobs")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidParamError(
                f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]", "top_logprobs"
            )
        if self.chat_template is not None:
            raise InvalidParamError(
                "chat_template is not supported: the model's own template is used", "chat_template"
            )
        check_continuation(self.continue_final_message, self.add_generation_prompt)

    def logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_kwargs(self) -> dict[str, Any] | None:
        """``chat_template_kwargs``, checked: names a template can read, none of its own."""
        return checked_template_kwargs(self.chat_template_kwargs)

    def max_new_tokens(self) -> int | None:
        """``max_completion_tokens`` (newer name) wins over ``max_tokens``; None: fill the context."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def template_messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, m in enumerate(self.messages):
            msg: dict[str, Any] = {"role": m.role, "content": m.text(i)}
            if m.name:
                msg["name"] = m.name
            if m.tool_calls:
                msg["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {
                            "name": c.function.name,
                            "arguments": template_arguments(c.function.arguments),
                        },
                    }
                    for c in m.tool_calls
                ]
            if m.tool_call_id is not None:
                msg["tool_call_id"] = m.tool_call_id
            out.append(msg)
        return out
