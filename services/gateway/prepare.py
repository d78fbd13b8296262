"""From a validated OpenAI body to what is submitted: prompt token ids + sampling parameters.

Checks, in order: unsupported features, prompt (non-empty, token ids inside the vocabulary),
context length (``prompt_tokens + max_tokens <= max_model_len``), then sampling values and the
output constraint (``sampling.py``).  Every failure is an ``InvalidParamError`` whose ``param``
names the field.
Tokenization and chat templates run in a worker thread so long prompts do not stall the loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, replace

from loraplex import env
from loraplex.gateway.bad_words import bad_words_token_ids
from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.sampling import request_constraint, sampling_params, truncated
from loraplex.gateway.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    OnePrompt,
)
from loraplex.gateway.tokenization import tokenize_chat
from loraplex.gateway.tools import ToolUse, template_tools, tool_use
from loraplex.sampling_params import SamplingParams
from loraplex.text.tokenizer import Tokenizer


@dataclass(frozen=True)
class Echo:
    """A completion that starts with its prompt (``echo``): the prompt's text, whether the
    generated tokens are left out (``max_tokens`` 0: only the prompt, scored), and how many
    alternatives its tokens' ``logprobs`` show (None: no logprobs)."""

    text: str
    prompt_only: bool = False
    logprobs: int | None = None


@dataclass(frozen=True)
class Prepared:
    """A request ready to submit.  ``created`` is unix seconds; ``arrival`` is monotonic."""

    request_id: str
    tenant: str
    model: str
    adapter: str | None  # the adapter's id (owner/name), None for the base model
    prompt_ids: list[int]
    sampling: SamplingParams
    created: int
    arrival: float
    echo: Echo | None = None
    cache_salt: str = ""  # SubmitRequest.cache_salt: whose cached prefixes it may reuse
    tool_use: ToolUse | None = None  # chat: the tools its answer may call (tools.py)
    reasoning_parser: str | None = None  # chat: how its answer's thinking is read (reasoning.py)
    # vLLM's prompt_logprobs: alternatives its answer shows per prompt token (None: not asked)
    prompt_logprobs: int | None = None
    tokens_as_ids: bool = False  # vLLM's return_tokens_as_token_ids: logprobs say "token_id:<id>"
    return_token_ids: bool = False  # vLLM's: prompt and answer token ids in the answer

    def choice(self, index: int) -> Prepared:
        """The request behind choice ``index`` of an ``n`` > 1 request: its own id and, when a
        seed was given, seed + index, so the choices differ but each is reproducible."""
        if index == 0:
            return self
        seed = self.sampling.seed
        sampling = replace(self.sampling, seed=None if seed is None else seed + index)
        return replace(self, request_id=f"{self.request_id}-{index}", sampling=sampling)


class RequestBuilder:
    def __init__(
        self,
        tokenizer: Tokenizer,
        max_model_len: int,
        prefix_cache_scope: str = "tenant",
        tool_call_parser: str = "hermes",
        reasoning_parser: str = "none",
        exclude_tools_when_none: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.prefix_cache_scope = prefix_cache_scope
        self.tool_call_parser = tool_call_parser
        self.reasoning_parser = None if reasoning_parser == "none" else reasoning_parser
        self.exclude_tools_when_none = exclude_tools_when_none
        # The chat template ends turns with <|im_end|>; generation_config may stop only on </s>.
        self.chat_stop_ids = tokenizer.chat_stop_ids()
        self.max_batch_choices = env.GATEWAY_MAX_BATCH_CHOICES.get()

    async def completions(
        self, req: CompletionRequest, tenant: str, adapter: str | None
    ) -> list[Prepared]:
        """One request per prompt (a batch ``prompt`` is several), in order; each is later
        submitted once per choice (``Prepared.choice``), so a batch is prompts × n requests."""
        prompts = req.prompt_list()
        total = len(prompts) * req.n
        if total > self.max_batch_choices:
            raise InvalidParamError(
                f"{len(prompts)} prompts x n={req.n} is {total} requests; at most "
                f"{self.max_batch_choices} per request (LORAPLEX_GATEWAY_MAX_BATCH_CHOICES)",
                "prompt",
            )
        out: list[Prepared] = []
        for i, prompt in enumerate(prompts):
            try:
                p = await self.completion(req, tenant, adapter, prompt)
            except InvalidParamError as e:
                if not req.is_batch or e.param != "prompt":
                    raise
                raise InvalidParamError(f"prompt[{i}]: {e}", f"prompt[{i}]", e.code) from e
            # prompt i of a batch: its own id, so its choices (``-1``, ...) stay unique too
            out.append(p if i == 0 else replace(p, request_id=f"{out[0].request_id}-p{i}"))
        return out

    async def completion(
        self, req: CompletionRequest, tenant: str, adapter: str | None, prompt: OnePrompt
    ) -> Prepared:
        if isinstance(prompt, str):
            ids = await asyncio.to_thread(self.tokenizer.encode, prompt, req.add_special_tokens)
        else:
            ids = list(prompt)
            vocab = self.tokenizer.vocab_size
            bad = next((t for t in ids if t >= vocab), None)
            if bad is not None:
                raise InvalidParamError(
                    f"prompt token id {bad} is outside the vocabulary (size {vocab})", "prompt"
                )
        if not ids:
            raise InvalidParamError("prompt must not be empty", "prompt")
        whole = len(ids)
        ids = truncated(ids, req.truncate_prompt_tokens)
        max_tokens, echo = req.max_tokens, None
        if req.echo:
            text = prompt if isinstance(prompt, str) and len(ids) == whole else None
            text = text if text is not None else self.tokenizer.decode(ids)
            echo = Echo(text, prompt_only=max_tokens == 0, logprobs=req.logprobs)
            if echo.prompt_only:  # one token is generated (the prompt's logits need a step), unseen
                max_tokens = 1
        p = await self._prepared("cmpl", req, tenant, adapter, ids, max_tokens, "prompt", ())
        return replace(p, echo=echo)

    async def chat(self, req: ChatCompletionRequest, tenant: str, adapter: str | None) -> Prepared:
        use = tool_use(req.tools, req.tool_choice, req.parallel_tool_calls, self.tool_call_parser)
        messages = req.template_messages()
        tools = template_tools(req.tools, use, self.exclude_tools_when_none)
        kwargs = req.template_kwargs()
        ids = await tokenize_chat(
            self.tokenizer,
            messages,
            req.add_generation_prompt,
            req.add_special_tokens,
            tools,
            kwargs,
            req.continue_final_message,
        )
        if not ids:
            raise InvalidParamError("messages render to an empty prompt", "messages")
        ids = truncated(ids, req.truncate_prompt_tokens)
        max_tokens = req.max_new_tokens()
        param = "messages"
        p = await self._prepared(
            "chatcmpl", req, tenant, adapter, ids, max_tokens, param, self.chat_stop_ids, use
        )
        # A constrained output follows its grammar from the first token: no thinking to read.
        thinking = self.reasoning_parser if p.sampling.structured_outputs is None else None
        return replace(p, reasoning_parser=thinking)

    async def _prepared(
        self,
        kind: str,
        req: GenerateRequest,
        tenant: str,
        adapter: str | None,
        ids: list[int],
        max_tokens: int | None,
        prompt_param: str,
        extra_stop_ids: tuple[int, ...],
        tools: ToolUse | None = None,
    ) -> Prepared:
        budget = self._budget(len(ids), max_tokens, prompt_param)
        constraint = request_constraint(req, tools)  # its errors name their own field
        compiled = await constraint.compiled() if constraint is not None else None
        banned = bad_words_token_ids(req.bad_words, self._encode_text)
        vocab = self.tokenizer.vocab_size
        sampling = sampling_params(req, budget, extra_stop_ids, vocab, compiled, banned)
        return Prepared(
            request_id=f"{kind}-{uuid.uuid4().hex}",
            tenant=tenant,
            model=req.model,
            adapter=adapter,
            prompt_ids=ids,
            sampling=sampling,
            created=int(time.time()),
            arrival=time.monotonic(),
            cache_salt=self._cache_salt(tenant, req.cache_salt),
            tool_use=tools,
            prompt_logprobs=req.shown_prompt_logprobs(),
            tokens_as_ids=req.return_tokens_as_token_ids,
            return_token_ids=req.return_token_ids,
        )

    def _encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _cache_salt(self, tenant: str, client_salt: str | None) -> str:
        """The tenant (unless prefixes are shared across tenants), then the client's own salt;
        neither can contain the separator (tenant names are ``[A-Za-z0-9._-]``, and the schema
        refuses control characters in a salt)."""
        parts = [f"t:{tenant}"] if self.prefix_cache_scope == "tenant" else []
        if client_salt:
            parts.append(f"c:{client_salt}")
        return "\x1f".join(parts)

    def _budget(self, prompt_tokens: int, max_tokens: int | None, param: str) -> int:
        """max_tokens to submit; None means all the context the prompt leaves."""
        limit = self.max_model_len
        if max_tokens is None:
            if prompt_tokens >= limit:
                raise InvalidParamError(
                    f"This model's maximum context length is {limit} tokens, but the prompt has "
                    f"{prompt_tokens} tokens, leaving no room for the completion.",
                    param,
                    "context_length_exceeded",
                )
            return limit - prompt_tokens
        if max_tokens < 1:
            raise InvalidParamError(
                f"max_tokens must be at least 1 (0 only with echo), got {max_tokens}", "max_tokens"
            )
        if prompt_tokens + max_tokens > limit:
            raise InvalidParamError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} "
                "for the completion). Please reduce the length of the prompt or max_tokens.",
                param,
                "context_length_exceeded",
            )
        return max_tokens
